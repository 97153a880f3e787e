"""Property-based tests (hypothesis): loaders and metrics never fail with anything but our documented
errors, and metrics are invariant to what they should be invariant to."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qc.errors import QCInputError
from qc.io import load_scan

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 40), st.integers(1, 40)),
    spacing=st.tuples(*[st.floats(0.05, 10.0)] * 3),
    kind=st.sampled_from(["ct", "uniform", "zeros", "huge", "int8"]),
    seed=st.integers(0, 2**16),
)
def test_loader_returns_a_scan_or_a_documented_error(tmp_path_factory, shape, spacing, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "ct":
        arr = rng.normal(0, 50, shape).astype(np.float32)
        arr[..., : max(1, shape[2] // 3)] = -1000
    elif kind == "uniform":
        arr = rng.uniform(-3000, 5000, shape).astype(np.float32)
    elif kind == "zeros":
        arr = np.zeros(shape, np.int16)
    elif kind == "huge":
        arr = rng.uniform(-1e30, 1e30, shape).astype(np.float32)
    else:
        arr = rng.integers(-128, 127, shape).astype(np.int8)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    p = tmp_path_factory.mktemp("h") / "x.nii.gz"
    sitk.WriteImage(img, str(p))
    try:
        scan = load_scan(p)
    except QCInputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    # integer files stay integer (int16: exact, half the memory), float files become float32 (qc.io docstring)
    assert scan.hu.dtype == (np.int16 if arr.dtype.kind in "iu" else np.float32), (arr.dtype, scan.hu.dtype)
    assert scan.hu.ndim == 3 and np.isfinite(scan.hu).all()
    assert scan.hu.min() >= -1200


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flip_x=st.booleans(), flip_y=st.booleans(), shift=st.integers(-20, 20))
def test_metrics_invariant_to_the_storage_axis_convention(tmp_path_factory, flip_x, flip_y, shift):
    """The same physical image stored with flipped axes (and the direction matrix saying so) gives the same
    centring, coverage and noise: the loader's canonical LPS orientation makes storage invisible."""
    from phantoms import simulate
    from qc.pipeline import assess

    ph = simulate("head", seed=3, matrix=128, shift_x=float(shift))
    img = sitk.Cast(ph.scan.to_sitk(), sitk.sitkInt16)
    d = tmp_path_factory.mktemp("f")
    sitk.WriteImage(img, str(d / "a.nii.gz"))
    sitk.WriteImage(sitk.Flip(img, [flip_x, flip_y, False]), str(d / "b.nii.gz"))
    a, b = assess(d / "a.nii.gz"), assess(d / "b.nii.gz")
    for name in ("centering_offset_lateral_mm", "centering_offset_vertical_mm", "vertex_margin_mm",
                 "global_noise_index_hu", "head_yaw_deg"):
        assert a.iqms[name].value == b.iqms[name].value, name
