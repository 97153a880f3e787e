"""Test helper: make every socket connection and DNS lookup fail (proves a code path never reaches the network)."""

from __future__ import annotations

import socket

import pytest


def refuse_network(mp: pytest.MonkeyPatch, calls: list) -> None:
    """Patch ``socket`` through ``mp`` so that connecting or resolving raises OSError; each attempt is appended
    to ``calls``."""

    def refuse(*args, **kwargs):
        calls.append(args[:2])
        raise OSError("network access attempted")

    for obj, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "getaddrinfo"),
                      (socket, "create_connection")):
        mp.setattr(obj, name, refuse)
