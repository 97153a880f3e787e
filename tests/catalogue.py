"""The catalogue of bad and unusual inputs (issue: reliability), as builders shared by
``tests/test_bad_inputs.py`` (one `qc assess` per case) and ``tests/test_audit_catalogue.py`` (every case in one
folder under `qc audit`).

A builder ``build_NN_name(folder, ph, seed)`` writes one input into ``folder`` (created if needed) from ``ph``
(a small head phantom, ``simulate('head', seed=1, matrix=128)``) and returns the path to give `qc assess`.
``seed`` makes the DICOM UIDs of the case unique, so that many cases can share one audit folder (the audit
groups DICOM files by SeriesInstanceUID across the whole tree).

:data:`CASES` lists, per case, what `qc audit` must do with it (``AuditExpect``): assess it (``scan``, with a
warning substring or None), record it as failed (``error``) or refused at discovery (``skipped``) with a reason
substring, ignore it without a record (``ignored``: a file that is not an image; ``none``: nothing to find).
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from phantoms.dicom import write_dicom_series
from qc.io import Scan


class Small:
    """A few slices of a phantom, shaped like a Phantom for :func:`dicom`."""

    def __init__(self, ph, n: int, start: int = 0):
        self.scan = Scan(hu=ph.scan.hu[start : start + n], spacing=ph.scan.spacing,
                         origin=(ph.scan.origin[0], ph.scan.origin[1], ph.scan.origin[2] + start * ph.scan.spacing[0]),
                         metadata=ph.scan.metadata, source="small")


def scan_of(ph, hu=None, **kw) -> Scan:
    return Scan(hu=ph.scan.hu if hu is None else hu, spacing=kw.pop("spacing", ph.scan.spacing),
                origin=ph.scan.origin, metadata=kw.pop("metadata", ph.scan.metadata), source="case")


def nifti(folder: Path, arr: np.ndarray, spacing=(1.0, 1.0, 2.5), name="x.nii.gz", dtype=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr if dtype is None else arr.astype(dtype))
    img.SetSpacing(spacing)
    p = folder / name
    sitk.WriteImage(img, str(p))
    return p


def dicom(folder: Path, ph, name="dcm", **kw) -> Path:
    return write_dicom_series(ph.scan if isinstance(ph, Small) else scan_of(ph), folder / name, **kw)


def _spacing_xyz(ph) -> tuple:
    return tuple(reversed(ph.scan.spacing))


# ------------------------------------------------------------------------------------------ refused inputs
def build_01_missing(folder: Path, ph=None, seed: int = 0) -> Path:
    """A path that does not exist: a symbolic link whose target is gone (an unmounted archive)."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "gone.nii.gz"
    os.symlink(folder / "target-that-was-deleted.nii.gz", link)
    return link


def build_02_empty_folder(folder: Path, ph=None, seed: int = 0) -> Path:
    (folder / "e").mkdir(parents=True)
    return folder / "e"


def build_03_non_image_file(folder: Path, ph=None, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.pdf").write_bytes(b"%PDF-1.4 not an image")
    return folder / "report.pdf"


def build_04_truncated_nifti(folder: Path, ph, seed: int = 0) -> Path:
    p = nifti(folder, ph.scan.hu.astype(np.int16))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


CORRUPT_FILE_INDEX = 3


def build_05_corrupt_dicom_pixels(folder: Path, ph, seed: int = 0) -> Path:
    d = dicom(folder, ph, seed=seed)
    f = sorted(d.iterdir())[CORRUPT_FILE_INDEX]
    f.write_bytes(f.read_bytes()[:-5000])
    return d


def build_06_dicom_without_pixel_data(folder: Path, ph, seed: int = 0) -> Path:
    import pydicom

    d = dicom(folder, Small(ph, 1), seed=seed)
    f = next(d.iterdir())
    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.save_as(f)
    return f


def build_07_non_ct_modality(folder: Path, ph, seed: int = 0, modality: str = "MR") -> Path:
    return dicom(folder, Small(ph, 3), seed=seed, extra={"Modality": modality})


def build_08_sr_dose_report(folder: Path, ph=None, seed: int = 0) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    fm.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"ctqc-sr-{seed}"])
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(folder / "dose.dcm"), {}, file_meta=fm, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "SR", generate_uid(entropy_srcs=[f"ctqc-sr-series-{seed}"])
    ds.save_as(folder / "dose.dcm", enforce_file_format=True)
    return folder / "dose.dcm"


def build_09_scout_localizer(folder: Path, ph, seed: int = 0) -> Path:
    return dicom(folder, Small(ph, 1), seed=seed, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})


def build_10_rgb_secondary_capture(folder: Path, ph=None, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = seed % 256  # distinct content per seed (files are keyed by their hash)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(folder / "rgb.nrrd"))
    return folder / "rgb.nrrd"


def build_11_4d_volume(folder: Path, ph=None, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.JoinSeries([sitk.GetImageFromArray(np.full((8, 32, 32), seed, np.int16))] * 3)
    sitk.WriteImage(img, str(folder / "4d.nii.gz"))
    return folder / "4d.nii.gz"


def build_12_mostly_nan(folder: Path, ph, seed: int = 0) -> Path:
    hu = ph.scan.hu.copy()
    hu[: hu.shape[0] // 2] = np.nan
    return nifti(folder, hu)


def build_13_constant_volume(folder: Path, ph=None, seed: int = 0) -> Path:
    return nifti(folder, np.full((10, 64, 64), 40.0, np.float32))


def build_14_normalised_not_hu(folder: Path, ph, seed: int = 0) -> Path:
    return nifti(folder, ((ph.scan.hu + 1024) / 4095).astype(np.float32))


def build_15_zero_spacing(folder: Path, ph, seed: int = 0) -> Path:
    p = nifti(folder, ph.scan.hu.astype(np.int16), name="zero.nii")
    raw = bytearray(p.read_bytes())
    raw[80:84] = struct.pack("<f", 0.0)  # pixdim[1] (x spacing) = 0
    p.write_bytes(bytes(raw))
    return p


def build_16_huge_dimensions(folder: Path, ph=None, seed: int = 0) -> Path:
    """A NIfTI header announcing 2048^3 int16 voxels (16 GiB) followed by a few bytes of data: it must be
    refused from the header alone, before any pixel is read."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 2048))
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((0.5, 0.5, 0.5))
    hdr.set_sform(np.diag([0.5, 0.5, 0.5, 1.0]), code=1)
    p = folder / "huge.nii"
    with open(p, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + np.full(64, seed, np.int16).tobytes())
    return p


def build_17_tiny_volume(folder: Path, ph=None, seed: int = 0) -> Path:
    return nifti(folder, np.random.default_rng(seed).normal(0, 100, (4, 8, 8)).astype(np.float32))


def build_18_mr_like_intensities(folder: Path, ph=None, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.zeros((20, 64, 64), np.float32)
    arr[:, 10:54, 10:54] = rng.uniform(200, 1500, (20, 44, 44))
    return nifti(folder, arr)


def build_19_region_not_supported(folder: Path, ph=None, seed: int = 0) -> Path:
    legs = np.full((20, 64, 64), -1000.0, np.float32)
    legs[:, 20:44, 8:28] = 40.0 + seed
    legs[:, 20:44, 36:56] = 40.0
    return nifti(folder, legs, name="legs.nii.gz")


# ------------------------------------------------------------------------------------------ assessed, with a warning
def build_21_single_2d_slice(folder: Path, ph, seed: int = 0) -> Path:
    d = dicom(folder, Small(ph, 1, start=25), seed=seed)
    return next(d.iterdir())


def build_22_few_nan_voxels(folder: Path, ph, seed: int = 0) -> Path:
    hu = ph.scan.hu.copy()
    hu[0, :3, :3] = np.nan
    return nifti(folder, hu, spacing=_spacing_xyz(ph))


def build_23_stored_without_rescale(folder: Path, ph, seed: int = 0) -> Path:
    return nifti(folder, ph.scan.hu + 1024, spacing=_spacing_xyz(ph), dtype=np.int16)


def build_24_unusual_rescale_slope_intercept(folder: Path, ph, seed: int = 0) -> Path:
    """Stored = (HU + 2048) / 2 with slope 2, intercept -2048: the loader must apply them."""
    import pydicom

    d = dicom(folder, ph, seed=seed)
    for f in d.iterdir():
        ds = pydicom.dcmread(f)
        stored = ds.pixel_array.astype(np.int32) - 1024  # HU
        ds.PixelData = np.clip(np.rint((stored + 2048) / 2), 0, 32767).astype(np.int16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-2048"
        ds.save_as(f)
    return d


def build_25_missing_slices(folder: Path, ph, seed: int = 0) -> Path:
    d = dicom(folder, ph, seed=seed)
    for f in sorted(d.iterdir())[20:23]:
        f.unlink()
    return d


def build_26_duplicate_slices(folder: Path, ph, seed: int = 0) -> Path:
    import pydicom
    from pydicom.uid import generate_uid

    d = dicom(folder, ph, seed=seed)
    src = sorted(d.iterdir())[10]
    dup = d / "dup.dcm"
    shutil.copy(src, dup)
    ds = pydicom.dcmread(dup)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"ctqc-dup-{seed}"])
    ds.save_as(dup)
    return d


def build_27_mixed_series_in_one_folder(folder: Path, ph, seed: int = 0) -> Path:
    dicom(folder, ph, name="mix/a", seed=seed)
    dicom(folder, Small(ph, 4), name="mix/b", seed=seed + 1)
    return folder / "mix"


def build_28_irregular_slice_spacing(folder: Path, ph, seed: int = 0) -> Path:
    s = ph.scan
    z = s.origin[2] + np.cumsum(np.r_[0, np.where(np.arange(s.shape[0] - 1) % 2, 2.0, 3.0)])
    positions = [(s.origin[0], s.origin[1], float(v)) for v in z]
    return write_dicom_series(scan_of(ph), folder / "irr", positions=positions, seed=seed)


def build_29_gantry_tilt(folder: Path, ph, seed: int = 0) -> Path:
    s = ph.scan
    t = np.radians(12.0)
    c = [0.0, float(np.cos(t)), float(-np.sin(t))]
    positions = [(s.origin[0], s.origin[1], s.origin[2] + k * s.spacing[0]) for k in range(s.shape[0])]
    return write_dicom_series(scan_of(ph), folder / "tilt", orientation=[1, 0, 0] + c, positions=positions, seed=seed)


def build_30_oblique_orientation(folder: Path, ph, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    img = ph.scan.to_sitk()
    a = np.radians(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    img.SetDirection(tuple(rot.ravel()))
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16), str(folder / "obl.nii.gz"))
    return folder / "obl.nii.gz"


def build_31_rle_compressed_dicom(folder: Path, ph, seed: int = 0) -> Path:
    import pydicom
    from pydicom.uid import RLELossless

    d = dicom(folder, ph, seed=seed)
    for f in d.iterdir():
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    return d


def build_32_non_ascii_path(folder: Path, ph, seed: int = 0) -> Path:
    sub = folder / "Patiënt_Ünïcode_頭部"
    return nifti(sub, ph.scan.hu.astype(np.int16), spacing=_spacing_xyz(ph), name="scan_ß.nii.gz")


def build_33_symlink_loop(folder: Path, ph, seed: int = 0) -> Path:
    d = dicom(folder, ph, name="loop", seed=seed)
    os.symlink(d, d / "self")
    return d


# ------------------------------------------------------------------------------------------ the table for `qc audit`
@dataclass(frozen=True)
class AuditExpect:
    """What `qc audit` does with one input: ``outcome`` is 'scan' (assessed; ``needle`` in a warning, or None),
    'error' (failed, recorded with ``needle`` in the reason), 'skipped' (refused at discovery, recorded),
    'ignored' (not an image: counted, not recorded) or 'none' (nothing to find: no record)."""

    outcome: str
    needle: str | None = None
    error_type: str | None = None
    at_discovery: bool = False   # an 'error' recorded while walking the folder (no task ran)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[..., Path]
    audit: tuple[tuple[str, AuditExpect], ...]   # (sub-path of the built input or "", expectation)
    kwargs: tuple = ()


def _one(outcome, needle=None, error_type=None, at_discovery=False):
    return (("", AuditExpect(outcome, needle, error_type, at_discovery)),)


#: every input case of the catalogue except 20 (an unwritable *output* folder: not an input). Expectations for
#: `qc audit`; tests/test_bad_inputs.py holds those for `qc assess`.
CASES: tuple[Case, ...] = (
    Case("01_missing", build_01_missing, _one("error", "broken symbolic link", "QCInputError", at_discovery=True)),
    Case("02_empty_folder", build_02_empty_folder, _one("none")),
    Case("03_non_image_file", build_03_non_image_file, _one("ignored")),
    Case("04_truncated_nifti", build_04_truncated_nifti, _one("error", "truncated", "QCInputError")),
    Case("05_corrupt_dicom_pixels", build_05_corrupt_dicom_pixels,
         _one("error", "cannot read DICOM pixel data", "QCInputError")),  # + [file slice_0003.dcm]
    Case("06_dicom_without_pixel_data", build_06_dicom_without_pixel_data, _one("error", "no pixel data", "QCInputError")),
    Case("07_mr", build_07_non_ct_modality, _one("skipped", "modality MR", "NotCTError"), (("modality", "MR"),)),
    Case("07_pt", build_07_non_ct_modality, _one("skipped", "modality PT", "NotCTError"), (("modality", "PT"),)),
    Case("07_nm", build_07_non_ct_modality, _one("skipped", "modality NM", "NotCTError"), (("modality", "NM"),)),
    Case("08_sr_dose_report", build_08_sr_dose_report, _one("skipped", "modality SR", "NotCTError")),
    Case("09_scout_localizer", build_09_scout_localizer, _one("skipped", "localizer", "QCInputError")),
    Case("10_rgb", build_10_rgb_secondary_capture, _one("error", "RGB", "QCInputError")),
    Case("11_4d_volume", build_11_4d_volume, _one("error", "4-D", "QCInputError")),
    Case("12_mostly_nan", build_12_mostly_nan, _one("error", "NaN", "QCInputError")),
    Case("13_constant_volume", build_13_constant_volume, _one("error", "constant", "QCInputError")),
    Case("14_normalised_not_hu", build_14_normalised_not_hu, _one("error", "[0, 1]", "NotCTError")),
    Case("15_zero_spacing", build_15_zero_spacing, _one("error", "invalid voxel spacing", "QCInputError")),
    Case("16_huge_dimensions", build_16_huge_dimensions, _one("error", "GiB", "QCInputError")),
    Case("17_tiny_volume", build_17_tiny_volume, _one("error", "too small", "QCInputError")),
    Case("18_mr_like_intensities", build_18_mr_like_intensities, _one("error", "not CT-like", "NotCTError")),
    Case("19_region_not_supported", build_19_region_not_supported,
         _one("error", "region not supported", "UnsupportedRegionError")),
    Case("21_single_2d_slice", build_21_single_2d_slice, _one("scan", "single 2-D slice")),
    Case("22_few_nan_voxels", build_22_few_nan_voxels, _one("scan", "NaN/Inf")),
    Case("23_stored_without_rescale", build_23_stored_without_rescale, _one("scan", "without rescale")),
    Case("24_rescale_slope_intercept", build_24_unusual_rescale_slope_intercept, _one("scan")),
    Case("25_missing_slices", build_25_missing_slices, _one("scan", "missing slices")),
    Case("26_duplicate_slices", build_26_duplicate_slices, _one("scan", "duplicate slice position")),
    # the audit assesses every series of a folder: the full one, and the 4-slice one on its own
    Case("27_mixed_series", build_27_mixed_series_in_one_folder,
         (("a", AuditExpect("scan")), ("b", AuditExpect("error", "region not supported", "UnsupportedRegionError")))),
    Case("28_irregular_slice_spacing", build_28_irregular_slice_spacing, _one("scan", "irregular slice spacing")),
    Case("29_gantry_tilt", build_29_gantry_tilt, _one("scan", "gantry tilt 12.0")),
    Case("30_oblique_orientation", build_30_oblique_orientation, _one("scan", "oblique")),
    Case("31_rle_compressed_dicom", build_31_rle_compressed_dicom, _one("scan")),
    Case("32_non_ascii_path", build_32_non_ascii_path, _one("scan")),
    Case("33_symlink_loop", build_33_symlink_loop, _one("scan")),
)
