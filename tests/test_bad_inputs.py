"""Catalogue of bad and unusual inputs (issue: reliability). Each case: the CLI either assesses the scan with a
warning, or refuses it with exit code 2 and one line naming the file and the reason - never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from phantoms import simulate
from phantoms.dicom import write_dicom_series
from qc.cli import app
from qc.io import Scan

runner = CliRunner()


@pytest.fixture(scope="module")
def small_head():
    return simulate("head", seed=1, matrix=128)


def _scan(ph, hu=None, **kw) -> Scan:
    return Scan(hu=ph.scan.hu if hu is None else hu, spacing=kw.pop("spacing", ph.scan.spacing),
                origin=ph.scan.origin, metadata=kw.pop("metadata", ph.scan.metadata), source="case")


def _nifti(tmp: Path, arr: np.ndarray, spacing=(1.0, 1.0, 2.5), name="x.nii.gz", dtype=None) -> Path:
    img = sitk.GetImageFromArray(arr if dtype is None else arr.astype(dtype))
    img.SetSpacing(spacing)
    p = tmp / name
    sitk.WriteImage(img, str(p))
    return p


def _dicom(tmp: Path, ph, name="dcm", **kw) -> Path:
    return write_dicom_series(_scan(ph), tmp / name, **kw)


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


def test_02_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    _refused(tmp_path / "e", "empty folder")


def test_03_non_image_file(tmp_path):
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 not an image")
    _refused(tmp_path / "report.pdf", "not a supported image")


def test_04_truncated_nifti(tmp_path, small_head):
    p = _nifti(tmp_path, small_head.scan.hu.astype(np.int16))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    _refused(p, "cannot read")


def test_05_corrupt_dicom_pixels(tmp_path, small_head):
    d = _dicom(tmp_path, small_head)
    f = sorted(d.iterdir())[3]
    f.write_bytes(f.read_bytes()[:-5000])
    line = _refused(d, "cannot read")
    assert f.name in line


def test_06_dicom_without_pixel_data(tmp_path, small_head):
    import pydicom

    d = _dicom(tmp_path, _Small(small_head, 1))
    f = next(d.iterdir())
    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.save_as(f)
    _refused(f, "no pixel data")


@pytest.mark.parametrize("modality, needle", [("MR", "MR"), ("PT", "PT"), ("NM", "NM")])
def test_07_non_ct_modalities(tmp_path, small_head, modality, needle):
    d = _dicom(tmp_path, _Small(small_head, 3), extra={"Modality": modality})
    _refused(d, needle)


def test_08_sr_dose_report(tmp_path):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "dose.dcm"), {}, file_meta=fm, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "SR", generate_uid()
    ds.save_as(tmp_path / "dose.dcm", enforce_file_format=True)
    _ = pydicom
    _refused(tmp_path / "dose.dcm", "SR")


def test_09_scout_localizer(tmp_path, small_head):
    d = _dicom(tmp_path, _Small(small_head, 1), extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    _refused(d, "localizer")


def test_10_rgb_secondary_capture(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    img = sitk.GetImageFromArray(rgb, isVector=True)
    sitk.WriteImage(img, str(tmp_path / "rgb.nrrd"))
    _refused(tmp_path / "rgb.nrrd", "RGB")


def test_11_4d_volume(tmp_path):
    img = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((8, 32, 32), np.int16))] * 3)
    sitk.WriteImage(img, str(tmp_path / "4d.nii.gz"))
    _refused(tmp_path / "4d.nii.gz", "4-D")


def test_12_mostly_nan(tmp_path, small_head):
    hu = small_head.scan.hu.copy()
    hu[: hu.shape[0] // 2] = np.nan
    _refused(_nifti(tmp_path, hu), "NaN")


def test_13_constant_volume(tmp_path):
    _refused(_nifti(tmp_path, np.full((10, 64, 64), 40.0, np.float32)), "constant")


def test_14_normalised_not_hu(tmp_path, small_head):
    _refused(_nifti(tmp_path, ((small_head.scan.hu + 1024) / 4095).astype(np.float32)), "[0, 1]")


def test_15_zero_spacing(tmp_path, small_head):
    import struct

    p = _nifti(tmp_path, small_head.scan.hu.astype(np.int16), name="zero.nii")
    raw = bytearray(p.read_bytes())
    raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1] (x spacing) = 0
    p.write_bytes(bytes(raw))
    _refused(p, "invalid voxel spacing")


def test_16_huge_dimensions_refused_before_allocating(tmp_path, monkeypatch, small_head):
    monkeypatch.setenv("QC_MAX_MEMORY_GB", "0.0005")
    _refused(_nifti(tmp_path, small_head.scan.hu.astype(np.int16)), "GiB")


def test_17_tiny_volume(tmp_path):
    _refused(_nifti(tmp_path, np.random.default_rng(0).normal(0, 100, (4, 8, 8)).astype(np.float32)), "too small")


def test_18_mr_like_intensities(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.zeros((20, 64, 64), np.float32)
    arr[:, 10:54, 10:54] = rng.uniform(200, 1500, (20, 44, 44))
    _refused(_nifti(tmp_path, arr), "not CT-like")


def test_19_region_not_supported(tmp_path, small_head):
    r = runner.invoke(app, ["assess", str(_nifti(tmp_path, small_head.scan.hu.astype(np.int16)))])
    assert r.exit_code == 0  # auto: the head is recognised
    legs = np.full((20, 64, 64), -1000.0, np.float32)
    legs[:, 20:44, 8:28] = 40.0
    legs[:, 20:44, 36:56] = 40.0
    r = runner.invoke(app, ["assess", str(_nifti(tmp_path, legs, name="legs.nii.gz"))])
    assert r.exit_code == 2 and "region not supported" in r.output


def test_20_read_only_output_dir(tmp_path, small_head):
    if os.geteuid() == 0:
        out = Path("/proc/ctqc-cannot-write/out.json")  # root ignores permission bits: use an unwritable fs
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out.json"
    p = _nifti(tmp_path, small_head.scan.hu.astype(np.int16))
    r = runner.invoke(app, ["assess", str(p), "--json", str(out)])
    assert r.exit_code == 2 and "cannot write" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------ assessed, with a warning
def test_21_single_2d_slice(tmp_path, small_head):
    d = _dicom(tmp_path, _Small(small_head, 1, start=25))
    _assessed(next(d.iterdir()), "single 2-D slice")


def test_22_few_nan_voxels(tmp_path, small_head):
    hu = small_head.scan.hu.copy()
    hu[0, :3, :3] = np.nan
    _assessed(_nifti(tmp_path, hu, spacing=tuple(reversed(small_head.scan.spacing))), "NaN/Inf")


def test_23_stored_without_rescale(tmp_path, small_head):
    _assessed(_nifti(tmp_path, small_head.scan.hu + 1024, spacing=tuple(reversed(small_head.scan.spacing)),
                     dtype=np.int16), "without rescale")


def test_24_unusual_rescale_slope_intercept(tmp_path, small_head):
    """Stored = (HU + 2048) / 2 with slope 2, intercept -2048: the loader must apply them."""
    import pydicom

    d = _dicom(tmp_path, small_head)
    for f in d.iterdir():
        ds = pydicom.dcmread(f)
        stored = ds.pixel_array.astype(np.int32) - 1024  # HU
        ds.PixelData = np.clip(np.rint((stored + 2048) / 2), 0, 32767).astype(np.int16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-2048"
        ds.save_as(f)
    from qc.io import load_scan

    scan = load_scan(d)
    assert np.abs(scan.hu - small_head.scan.hu).max() <= 1.0
    _assessed(d)


def test_25_missing_slices(tmp_path, small_head):
    d = _dicom(tmp_path, small_head)
    for f in sorted(d.iterdir())[20:23]:
        f.unlink()
    _assessed(d, "missing slices")


def test_26_duplicate_slices(tmp_path, small_head):
    import shutil

    d = _dicom(tmp_path, small_head)
    import pydicom
    from pydicom.uid import generate_uid

    src = sorted(d.iterdir())[10]
    dup = d / "dup.dcm"
    shutil.copy(src, dup)
    ds = pydicom.dcmread(dup)
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(dup)
    _assessed(d, "duplicate slice position")


def test_27_mixed_series_in_one_folder(tmp_path, small_head):
    _dicom(tmp_path, small_head, name="mix/a", seed=1)
    _dicom(tmp_path, _Small(small_head, 4), name="mix/b", seed=2)
    _assessed(tmp_path / "mix", "other series")


def test_28_irregular_slice_spacing(tmp_path, small_head):
    s = small_head.scan
    z = s.origin[2] + np.cumsum(np.r_[0, np.where(np.arange(s.shape[0] - 1) % 2, 2.0, 3.0)])
    positions = [(s.origin[0], s.origin[1], float(v)) for v in z]
    d = write_dicom_series(_scan(small_head), tmp_path / "irr", positions=positions)
    _assessed(d, "irregular slice spacing")


def test_29_gantry_tilt(tmp_path, small_head):
    s = small_head.scan
    t = np.radians(12.0)
    c = [0.0, float(np.cos(t)), float(-np.sin(t))]
    positions = [(s.origin[0], s.origin[1], s.origin[2] + k * s.spacing[0]) for k in range(s.shape[0])]
    d = write_dicom_series(_scan(small_head), tmp_path / "tilt", orientation=[1, 0, 0] + c, positions=positions)
    _assessed(d, "gantry tilt 12.0")


def test_30_oblique_orientation(tmp_path, small_head):
    img = small_head.scan.to_sitk()
    a = np.radians(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    img.SetDirection(tuple(rot.ravel()))
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16), str(tmp_path / "obl.nii.gz"))
    _assessed(tmp_path / "obl.nii.gz", "oblique")


def test_31_rle_compressed_dicom(tmp_path, small_head):
    import pydicom
    from pydicom.uid import RLELossless

    d = _dicom(tmp_path, small_head)
    for f in d.iterdir():
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    from qc.io import load_scan

    assert np.array_equal(load_scan(d).hu, small_head.scan.hu)


def test_32_non_ascii_path(tmp_path, small_head):
    folder = tmp_path / "Patiënt_Ünïcode_頭部"
    folder.mkdir()
    _assessed(_nifti(folder, small_head.scan.hu.astype(np.int16), spacing=tuple(reversed(small_head.scan.spacing)),
                     name="scan_ß.nii.gz"))


def test_33_symlink_loop(tmp_path, small_head):
    d = _dicom(tmp_path, small_head, name="loop")
    os.symlink(d, d / "self")
    _assessed(d)


class _Small:
    """A few slices of a phantom, shaped like a Phantom for _dicom()."""

    def __init__(self, ph, n: int, start: int = 0):
        self.scan = Scan(hu=ph.scan.hu[start : start + n], spacing=ph.scan.spacing,
                         origin=(ph.scan.origin[0], ph.scan.origin[1], ph.scan.origin[2] + start * ph.scan.spacing[0]),
                         metadata=ph.scan.metadata, source="small")
