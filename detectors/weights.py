"""Shipped model weights: a manifest, sha256 verification, and loaders that cannot execute code.

Every file under ``detectors/weights/`` is listed in ``manifest.json`` with its sha256, what it is, how it
was trained (data description, command, seed) and the metrics it reached. Loading goes through this module
only:

* tensors: ``safetensors`` (a flat tensor container: no pickle, nothing to execute);
* small classical models (logistic regressions, scalers): JSON numbers;
* a ``.pt``/``.pth`` a user brings is read with ``torch.load(..., weights_only=True)`` (PyTorch's restricted
  unpickler that only rebuilds tensors and plain containers).

A file whose sha256 differs from the manifest is refused with :class:`WeightsError` (it may have been
corrupted in transit or replaced); nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from qc.errors import QCInputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


class WeightsError(QCInputError):
    """Model weights are missing, unlisted, tampered with, or in an unsafe format."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(manifest: Path = MANIFEST) -> dict:
    if not manifest.exists():
        return {"models": {}}
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"weights manifest is unreadable: {exc}", manifest) from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise WeightsError("weights manifest has no 'models' table", manifest)
    return data


def model_entry(name: str, manifest: Path = MANIFEST) -> dict:
    models = read_manifest(manifest)["models"]
    if name not in models:
        raise WeightsError(f"model '{name}' is not in the weights manifest (have: {', '.join(sorted(models)) or 'none'}); "
                           f"train it with `qc train` or pass your own", manifest)
    return models[name]


def verified_path(name: str, manifest: Path = MANIFEST) -> Path:
    """Path of a manifest-listed weights file after checking that its sha256 matches."""
    entry = model_entry(name, manifest)
    path = manifest.parent / entry["file"]
    if not path.is_file():
        raise WeightsError(f"weights file for '{name}' is missing", path)
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise WeightsError(f"sha256 mismatch for '{name}' (manifest {str(entry.get('sha256'))[:12]}…, file {digest[:12]}…): "
                           "the file was modified or corrupted; refusing to load it", path)
    return path


def load_tensors(name: str, manifest: Path = MANIFEST) -> dict:
    """State dict of a manifest-listed safetensors file (verified)."""
    from safetensors.torch import load_file

    path = verified_path(name, manifest)
    if path.suffix != ".safetensors":
        raise WeightsError("shipped network weights must be .safetensors", path)
    return load_file(str(path))


def version_label(name: str, manifest: Path = MANIFEST) -> str:
    """'<version> sha256:<12 hex>' of a manifest entry: what the JSON result names as the model that ran."""
    entry = model_entry(name, manifest)
    return f"{entry.get('version', name)} sha256:{str(entry.get('sha256'))[:12]}"


@functools.lru_cache(maxsize=8)
def _cached_network(name: str, from_state, manifest: str):
    return from_state(load_tensors(name, Path(manifest)))


def shipped_network(name: str, from_state, manifest: Path | None = None):
    """A shipped safetensors network rebuilt by ``from_state(state_dict)`` (sha256-verified, cached per process),
    or None when it is missing or fails verification (its IQMs are then not measured)."""
    try:
        return _cached_network(name, from_state, str(manifest or MANIFEST))
    except WeightsError:
        return None


def load_json_model(name: str, manifest: Path = MANIFEST) -> dict:
    """A JSON-serialised classical model (verified)."""
    path = verified_path(name, manifest)
    if path.suffix != ".json":
        raise WeightsError("classical models are shipped as JSON", path)
    return json.loads(path.read_text())


def load_user_checkpoint(path: Path) -> dict:
    """A user's own checkpoint: safetensors, or a torch file read with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError("weights file not found", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(f"not a valid safetensors file ({type(exc).__name__})", path) from None
    import pickle

    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"refused: the checkpoint needs arbitrary code to load ({str(exc).splitlines()[0][:120]})",
                           path) from None
    except Exception as exc:
        raise WeightsError(f"not a readable torch checkpoint ({type(exc).__name__})", path) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError("checkpoint does not hold a state dict", path)
    return obj


def register(name: str, path: Path, entry: dict, manifest: Path = MANIFEST) -> dict:
    """Add or replace a manifest entry for ``path`` (which must sit next to the manifest)."""
    path = Path(path)
    data = read_manifest(manifest)
    full = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, **entry}
    data["models"][name] = full
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return full
