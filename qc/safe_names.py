"""File names made from data (a CSV column, a config's category, a DICOM tag, a store key): safe to join to an
output folder. The result never holds a path separator, ``..``, NUL, a control or other non-printable
character, a leading dot (hidden file) or a Windows device name, and is at most ``max_len`` characters; when
the name had to change, a short hash of the original is appended so that two different names cannot end up
as the same file. :func:`safe_child` joins such a name to a folder and checks that the result stays inside."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from qc.errors import QCInputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_filename(name, max_len: int = 80, fallback: str = "unnamed") -> str:
    """``name`` as one safe file-name component (letters, digits, '.', '_', '-'; see the module docstring)."""
    original = "" if name is None else str(name)
    text = unicodedata.normalize("NFKD", original).encode("ascii", "ignore").decode("ascii")
    text = _UNSAFE.sub("_", text).strip("._-")
    text = re.sub(r"\.{2,}", ".", text)
    if not text:
        text = fallback
    if text.split(".")[0].upper() in _WINDOWS_DEVICES:
        text = "_" + text
    if text != original or len(text) > max_len:
        tag = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        text = f"{text[: max_len - 9]}-{tag}"
    return text


def safe_child(folder, name, suffix: str = "") -> Path:
    """``folder / (safe_filename(name) + suffix)``, refused (QCInputError) if it would resolve outside ``folder``
    (defence in depth: it cannot, given a suffix without separators)."""
    if any(ch in suffix for ch in "/\\\0"):
        raise QCInputError(f"unsafe file suffix {suffix!r}")
    folder = Path(folder)
    p = folder / (safe_filename(name) + suffix)
    if p.resolve().parent != folder.resolve():
        raise QCInputError(f"output name {name!r} would leave the output folder", folder)
    return p
