"""Declarative hierarchy configs shipped as package data (head_ct.yaml, chest_ct.yaml)."""
