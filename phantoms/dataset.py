"""A balanced, varied simulated dataset with a manifest (one row per scan, truth columns flattened)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from phantoms.projection import ARTIFACTS


def dataset_parameters(i: int, region: str, rng: np.random.Generator, artifact_prob: float) -> dict:
    """Parameters of scan i: alternating regions when mixed, balanced kernels and dose levels
    (Chest CT-IQA 30/50 mAs-style pairs and Noise2Quality dose fractions), positioning errors, cut ranges
    and optional artifacts."""
    reg = ("head", "chest")[i % 2] if region == "mixed" else region
    kw: dict = {"region": reg, "kernel": ("smooth", "sharp")[(i // 2) % 2]}
    base = 400.0 if reg == "head" else 100.0
    kw["mas"] = float(rng.choice([0.3, 0.5, 1.0]) * base)
    kw["dose_fraction"] = float(rng.choice([0.05, 0.1, 0.25, 0.5, 0.75, 1.0]))
    kw["shift_x"] = float(rng.normal(0, 10))
    kw["shift_y"] = float(rng.normal(0, 15))
    if reg == "head":
        kw["yaw"], kw["roll"], kw["pitch"] = (float(v) for v in rng.normal(0, [5, 4, 8]))
    else:
        kw["yaw"] = float(rng.normal(0, 3))
    cut = rng.random()
    if cut < 0.15:
        kw["z_end"] = 60.0 if reg == "head" else 40.0   # vertex / apices cut
    elif cut < 0.3:
        kw["z_start"] = -20.0 if reg == "head" else -120.0  # skull base / lung bases cut
    if rng.random() < artifact_prob:
        name = str(rng.choice(ARTIFACTS))
        kw["artifacts"] = {name: float(np.round(rng.uniform(0.3, 1.0), 2))}
    return kw


def make_dataset(out_dir, n: int = 10, region: str = "mixed", seed: int = 0, matrix: int = 256,
                 mode: str = "image", artifact_prob: float = 0.3, dicom: bool = False) -> Path:
    import pandas as pd

    from phantoms.simulate import _flatten, simulate, write_phantom

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kw = dataset_parameters(i, region, rng, artifact_prob)
        reg = kw.pop("region")
        ph = simulate(reg, seed=seed * 100003 + i, matrix=matrix, mode=mode, **kw)
        folder = out / f"{reg}_{i:04d}"
        paths = write_phantom(ph, folder, dicom=dicom)
        rows.append({"scan_id": folder.name, "path": str(paths["scan"].relative_to(out)), **_flatten(ph.truth)})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest
