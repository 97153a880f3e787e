"""Documented error types. Anything the user can fix is a :class:`QCInputError` (CLI exit code 2,
one-line message naming the file and the reason); anything else is a bug (exit code 1)."""

from __future__ import annotations


class QCInputError(Exception):
    """Bad or unsupported input: the message names the file (when there is one) and the reason."""

    def __init__(self, reason: str, path: object | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class NotCTError(QCInputError):
    """The input is an image, but not a CT (other modality, or intensities that are not Hounsfield units)."""


class UnsupportedRegionError(QCInputError):
    """The scan shows a body region this engine has no hierarchy for (only head and chest)."""


class ConfigError(QCInputError):
    """A hierarchy config or model file failed validation."""
