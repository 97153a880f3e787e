"""Catalogue of bad and unusual inputs (issue: reliability). Each case: the CLI either assesses the scan with a
warning, or refuses it with exit code 2 and one line naming the file and the reason - never a traceback.
The inputs are built by ``tests/catalogue.py`` (shared with ``tests/test_audit_catalogue.py``, which runs all of
them through `qc audit` in one folder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from phantoms import simulate
from qc.cli import app
from tests import catalogue as cat

runner = CliRunner()


@pytest.fixture(scope="module")
def small_head():
    return simulate("head", seed=1, matrix=128)


def _run(path: Path):
    return runner.invoke(app, ["assess", str(path), "--region", "head"])


def _refused(path: Path, needle: str):
    r = _run(path)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert needle in lines[0], lines[0]
    return lines[0]


def _assessed(path: Path, warning: str | None = None):
    r = _run(path)
    assert r.exit_code == 0, r.output
    if warning:
        assert warning in r.output, r.output
    return r


# ------------------------------------------------------------------------------------------ refused
def test_01_missing_path(tmp_path):
    _refused(tmp_path / "nope.nii.gz", "no such file")
    _refused(cat.build_01_missing(tmp_path / "link"), "no such file")  # a symlink whose target is gone


def test_02_empty_folder(tmp_path):
    _refused(cat.build_02_empty_folder(tmp_path), "empty folder")


def test_03_non_image_file(tmp_path):
    _refused(cat.build_03_non_image_file(tmp_path), "not a supported image")


def test_04_truncated_nifti(tmp_path, small_head):
    _refused(cat.build_04_truncated_nifti(tmp_path, small_head), "cannot read")


def test_05_corrupt_dicom_pixels(tmp_path, small_head):
    d = cat.build_05_corrupt_dicom_pixels(tmp_path, small_head)
    line = _refused(d, "cannot read")
    assert sorted(d.iterdir())[cat.CORRUPT_FILE_INDEX].name in line


def test_06_dicom_without_pixel_data(tmp_path, small_head):
    _refused(cat.build_06_dicom_without_pixel_data(tmp_path, small_head), "no pixel data")


@pytest.mark.parametrize("modality, needle", [("MR", "MR"), ("PT", "PT"), ("NM", "NM")])
def test_07_non_ct_modalities(tmp_path, small_head, modality, needle):
    _refused(cat.build_07_non_ct_modality(tmp_path, small_head, modality=modality), needle)


def test_08_sr_dose_report(tmp_path):
    _refused(cat.build_08_sr_dose_report(tmp_path), "SR")


def test_09_scout_localizer(tmp_path, small_head):
    _refused(cat.build_09_scout_localizer(tmp_path, small_head), "localizer")


def test_10_rgb_secondary_capture(tmp_path):
    _refused(cat.build_10_rgb_secondary_capture(tmp_path), "RGB")


def test_11_4d_volume(tmp_path):
    _refused(cat.build_11_4d_volume(tmp_path), "4-D")


def test_12_mostly_nan(tmp_path, small_head):
    _refused(cat.build_12_mostly_nan(tmp_path, small_head), "NaN")


def test_13_constant_volume(tmp_path):
    _refused(cat.build_13_constant_volume(tmp_path), "constant")


def test_14_normalised_not_hu(tmp_path, small_head):
    _refused(cat.build_14_normalised_not_hu(tmp_path, small_head), "[0, 1]")


def test_15_zero_spacing(tmp_path, small_head):
    _refused(cat.build_15_zero_spacing(tmp_path, small_head), "invalid voxel spacing")


def test_16_huge_dimensions_refused_before_allocating(tmp_path, monkeypatch, small_head):
    # a header announcing 2048^3 voxels, with almost no data: refused from the header alone
    _refused(cat.build_16_huge_dimensions(tmp_path / "huge"), "GiB")
    monkeypatch.setenv("QC_MAX_MEMORY_GB", "0.0005")
    _refused(cat.nifti(tmp_path, small_head.scan.hu.astype(np.int16)), "GiB")


def test_17_tiny_volume(tmp_path):
    _refused(cat.build_17_tiny_volume(tmp_path), "too small")


def test_18_mr_like_intensities(tmp_path):
    _refused(cat.build_18_mr_like_intensities(tmp_path), "not CT-like")


def test_19_region_not_supported(tmp_path, small_head):
    r = runner.invoke(app, ["assess", str(cat.nifti(tmp_path, small_head.scan.hu.astype(np.int16)))])
    assert r.exit_code == 0  # auto: the head is recognised
    r = runner.invoke(app, ["assess", str(cat.build_19_region_not_supported(tmp_path))])
    assert r.exit_code == 2 and "region not supported" in r.output


def test_20_read_only_output_dir(tmp_path, small_head):
    if os.geteuid() == 0:
        out = Path("/proc/ctqc-cannot-write/out.json")  # root ignores permission bits: use an unwritable fs
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out.json"
    p = cat.nifti(tmp_path, small_head.scan.hu.astype(np.int16))
    r = runner.invoke(app, ["assess", str(p), "--json", str(out)])
    assert r.exit_code == 2 and "cannot write" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------ assessed, with a warning
def test_21_single_2d_slice(tmp_path, small_head):
    _assessed(cat.build_21_single_2d_slice(tmp_path, small_head), "single 2-D slice")


def test_22_few_nan_voxels(tmp_path, small_head):
    _assessed(cat.build_22_few_nan_voxels(tmp_path, small_head), "NaN/Inf")


def test_23_stored_without_rescale(tmp_path, small_head):
    _assessed(cat.build_23_stored_without_rescale(tmp_path, small_head), "without rescale")


def test_24_unusual_rescale_slope_intercept(tmp_path, small_head):
    """Stored = (HU + 2048) / 2 with slope 2, intercept -2048: the loader must apply them."""
    d = cat.build_24_unusual_rescale_slope_intercept(tmp_path, small_head)
    from qc.io import load_scan

    scan = load_scan(d)
    assert np.abs(scan.hu - small_head.scan.hu).max() <= 1.0
    _assessed(d)


def test_25_missing_slices(tmp_path, small_head):
    _assessed(cat.build_25_missing_slices(tmp_path, small_head), "missing slices")


def test_26_duplicate_slices(tmp_path, small_head):
    _assessed(cat.build_26_duplicate_slices(tmp_path, small_head), "duplicate slice position")


def test_27_mixed_series_in_one_folder(tmp_path, small_head):
    _assessed(cat.build_27_mixed_series_in_one_folder(tmp_path, small_head, seed=1), "other series")


def test_28_irregular_slice_spacing(tmp_path, small_head):
    _assessed(cat.build_28_irregular_slice_spacing(tmp_path, small_head), "irregular slice spacing")


def test_29_gantry_tilt(tmp_path, small_head):
    _assessed(cat.build_29_gantry_tilt(tmp_path, small_head), "gantry tilt 12.0")


def test_30_oblique_orientation(tmp_path, small_head):
    _assessed(cat.build_30_oblique_orientation(tmp_path, small_head), "oblique")


def test_31_rle_compressed_dicom(tmp_path, small_head):
    d = cat.build_31_rle_compressed_dicom(tmp_path, small_head)
    from qc.io import load_scan

    assert np.array_equal(load_scan(d).hu, small_head.scan.hu)


def test_32_non_ascii_path(tmp_path, small_head):
    _assessed(cat.build_32_non_ascii_path(tmp_path, small_head))


def test_33_symlink_loop(tmp_path, small_head):
    _assessed(cat.build_33_symlink_loop(tmp_path, small_head))
