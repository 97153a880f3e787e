from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_path(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not present: {p}")
    return p


@pytest.fixture(scope="session")
def head_phantom():
    from phantoms import simulate

    return simulate("head", seed=3)


@pytest.fixture(scope="session")
def chest_phantom():
    from phantoms import simulate

    return simulate("chest", seed=3)


@pytest.fixture(scope="session")
def head_files(tmp_path_factory, head_phantom):
    """The same head phantom written as NIfTI (+sidecar) and as a DICOM series."""
    from phantoms import write_phantom

    return write_phantom(head_phantom, tmp_path_factory.mktemp("head"), dicom=True)


@pytest.fixture(scope="session")
def shared_head_scan():
    from qc.io import load_scan

    return load_scan(shared_path("head_ct_ge_tilted"))
