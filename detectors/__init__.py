"""Detectors: what finds where to measure. ``classical`` (HU thresholds and morphology, no network)
is the always-available fallback; network backends plug in beside it."""
