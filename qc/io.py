"""Loading CT volumes into one canonical form.

Canonical orientation (every ``Scan``):

* ``scan.hu`` is a ``float32`` array indexed ``[z, y, x]`` (slice, row, column) in Hounsfield units;
* the image is oriented **LPS** (the DICOM patient frame): column index ``x`` increases towards the
  patient's **left**, row index ``y`` towards **posterior**, slice index ``z`` towards **superior**.
  An axial slice ``hu[k]`` is therefore displayed in the radiological convention (patient's right on
  the viewer's left, anterior at the top) and ``hu[-1]`` is the most superior slice;
* ``scan.spacing`` is in array order ``(dz, dy, dx)`` in mm; ``scan.origin`` is the LPS position (mm)
  of voxel ``[0, 0, 0]`` in physical order ``(x, y, z)``; ``scan.direction`` is the 3x3 ITK direction
  matrix (columns = physical directions of the x, y, z array axes). After re-orientation it is the
  identity unless the acquisition was oblique (a warning says so).
* ``scan.fov`` marks voxels that hold measured data: False outside the reconstruction circle (pixel
  padding such as -1500/-2048/-3024) and outside a resampled tilted stack. Those voxels are set to
  -1024 HU (air) in ``scan.hu`` so that no metric sees impossible values.

Formats: NIfTI (.nii/.nii.gz), NRRD, MHA/MHD (SimpleITK), a single DICOM file, a DICOM folder
(searched recursively; the CT series with the most slices is taken unless ``series_uid`` is given; the
others are listed in ``scan.series``). Headers are read with pydicom, pixels with SimpleITK/GDCM
(which also decodes JPEG, JPEG-LS and JPEG 2000 transfer syntaxes).

Gantry tilt and irregular slice spacing are resampled onto a regular, untilted grid aligned with the
table travel (see :func:`_resample_stack`); the tilt angle is kept in ``scan.metadata["GantryTiltDeg"]``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qc.errors import NotCTError, QCInputError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
AIR_HU = -1024.0
#: Values below this cannot be tissue or air (air is -1000 HU; scanners clamp at -1024):
#: they are outside-FOV padding.
PADDING_BELOW_HU = -1200.0
#: Refuse volumes whose float32 working copies would exceed this (GiB); env QC_MAX_MEMORY_GB.
DEFAULT_MAX_MEMORY_GB = 8.0

# DICOM keywords copied into Scan.metadata (no patient identifiers).
_META_KEYWORDS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "StudyDate", "StudyDescription",
    "ProtocolName", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "KVP", "XRayTubeCurrent",
    "ExposureTime", "Exposure", "CTDIvol", "ConvolutionKernel", "WindowCenter", "WindowWidth", "SliceThickness",
    "GantryDetectorTilt", "PatientPosition", "ReconstructionDiameter", "DataCollectionDiameter",
    "DataCollectionCenterPatient", "ReconstructionTargetCenterPatient", "TableHeight", "PixelPaddingValue",
    "RescaleIntercept", "RescaleSlope", "ImageType",
)
_LOCALIZER_WORDS = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM", "SURVIEW"}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder (header-only summary)."""

    uid: str
    modality: str
    n_files: int
    description: str = ""
    is_localizer: bool = False
    sop_class: str = ""


@dataclass
class Scan:
    """A CT volume in canonical LPS orientation (see module docstring)."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict = field(default_factory=dict)
    fov: np.ndarray | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    series: list[SeriesInfo] = field(default_factory=list)

    def __post_init__(self):
        self.hu = np.asarray(self.hu, dtype=np.float32)
        if self.hu.ndim != 3:
            raise QCInputError(f"expected a 3-D volume, got {self.hu.ndim}-D", self.source or None)
        self.spacing = tuple(float(s) for s in self.spacing)
        if self.fov is None:
            self.fov = np.ones(self.hu.shape, dtype=bool)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    def z_positions_mm(self) -> np.ndarray:
        """Physical z (LPS, superior positive) of each slice centre, in mm."""
        return self.origin[2] + self.direction[2, 2] * self.spacing[0] * np.arange(self.shape[0])

    def to_sitk(self):
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.hu)
        img.SetSpacing(tuple(reversed(self.spacing)))
        img.SetOrigin(tuple(self.origin))
        img.SetDirection(tuple(np.asarray(self.direction, dtype=float).ravel()))
        return img


# ----------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------


def load_scan(path, series_uid: str | None = None, max_memory_gb: float | None = None) -> Scan:
    """Load a CT scan from a file or DICOM folder into a canonical :class:`Scan`.

    Raises :class:`~qc.errors.QCInputError` (or a subclass) with a one-line reason for anything the
    user can fix: missing path, no image, non-CT modality, corrupt file, too large a volume.
    """
    path = Path(path)
    if max_memory_gb is None:
        max_memory_gb = float(os.environ.get("QC_MAX_MEMORY_GB", DEFAULT_MAX_MEMORY_GB))
    if not path.exists():
        raise QCInputError("no such file or folder", path)
    if path.is_dir():
        scan = _load_dicom_dir(path, series_uid, max_memory_gb)
    elif _is_image_file(path):
        scan = _load_image_file(path, max_memory_gb)
    elif _is_dicom_file(path):
        scan = _load_dicom_file(path, max_memory_gb)
    else:
        raise QCInputError(
            "not a supported image (NIfTI .nii/.nii.gz, NRRD, MHA/MHD, DICOM file or DICOM folder)", path
        )
    return _finalise(scan, path)


# ----------------------------------------------------------------------------------------------
# file formats
# ----------------------------------------------------------------------------------------------


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise QCInputError(f"cannot read: {exc.strerror}", path) from None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    try:  # DICOM without preamble (rare, old exports)
        import pydicom

        pydicom.dcmread(path, stop_before_pixels=True, force=False)
        return True
    except Exception:
        return False


def _check_memory(n_voxels: int, max_memory_gb: float, path) -> None:
    # float32 volume + fov mask + resampling/metric temporaries: ~3 float32 copies.
    need_gb = n_voxels * 4 * 3 / 2**30
    if need_gb > max_memory_gb:
        raise QCInputError(
            f"volume of {n_voxels:,} voxels needs about {need_gb:.1f} GiB, over the limit of "
            f"{max_memory_gb:g} GiB (set QC_MAX_MEMORY_GB to raise it)",
            path,
        )


def _sitk_read(path: Path, what: str = "image"):
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "rror" in ln or "annot" in ln), "unreadable")
        raise QCInputError(f"cannot read {what} (corrupt, truncated or unsupported encoding): {detail[:160]}", path) from None


def _load_image_file(path: Path, max_memory_gb: float) -> Scan:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise QCInputError("cannot read image header (corrupt or truncated file)", path) from None
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise QCInputError(f"{reader.GetNumberOfComponents()}-component (e.g. RGB) image: CT must be greyscale", path)
    if len(size) == 4 and size[3] > 1:
        raise QCInputError(f"4-D image ({'x'.join(map(str, size))}): give one 3-D CT volume", path)
    if len(size) > 4:
        raise QCInputError(f"{len(size)}-D image: give one 3-D CT volume", path)
    _check_memory(int(np.prod(size)), max_memory_gb, path)
    bad_values = _nifti_check(path) if path.name.lower().endswith((".nii", ".nii.gz")) else None
    img = _sitk_read(path)
    if bad_values is not None and bad_values.ndim == img.GetDimension():
        # ITK's NIfTI reader turns NaN into 0: put them back so that _finalise sees and reports them
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
        arr[bad_values.T] = np.nan
        fixed = sitk.GetImageFromArray(arr)
        fixed.CopyInformation(img)
        img = fixed
    warns = []
    if img.GetDimension() == 4:
        img = img[:, :, :, 0]
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
        warns.append("single 2-D slice: z-dependent metrics (coverage) are not measured")
    metadata = _sidecar_metadata(path)
    scan = _scan_from_sitk(img, metadata, str(path))
    scan.warnings.extend(warns)
    return scan


def _nifti_check(path: Path) -> np.ndarray | None:
    """Integrity checks that ITK's NIfTI reader skips: a truncated (gzip) file reads as zeros there, zero
    or negative pixdim becomes 1 mm, NaN becomes 0. Reads the file once with nibabel; returns the mask of
    non-finite voxels (stored order, x-fastest as nibabel indexes it) or None."""
    import gzip
    import logging
    import struct

    import nibabel as nib

    logging.getLogger("nibabel").setLevel(logging.ERROR)  # it "fixes" bad headers with a log line; we refuse them
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            raw = fh.read(348)
        little = struct.unpack("<i", raw[:4])[0] == 348
        ndim = struct.unpack(("<" if little else ">") + "h", raw[40:42])[0]
        pixdim = struct.unpack(("<" if little else ">") + "8f", raw[76:108])
        img = nib.load(str(path))
    except Exception as exc:  # struct/gzip/nibabel raise several types for a broken header
        raise QCInputError(f"cannot read NIfTI header ({type(exc).__name__})", path) from None
    zooms = pixdim[1 : 1 + min(3, max(ndim, 1))]
    if any((not np.isfinite(z)) or z <= 0 for z in zooms):
        raise QCInputError(f"invalid voxel spacing {tuple(round(z, 4) for z in zooms)} mm in the NIfTI header", path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError on truncated/corrupt data
        raise QCInputError(f"cannot read image data: truncated or corrupt file ({type(exc).__name__})", path) from None
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            return bad.reshape(bad.shape[:3]) if bad.ndim > 3 and bad.shape[3:] == (1,) * (bad.ndim - 3) else bad
    return None


def _sidecar_metadata(path: Path) -> dict:
    """Optional JSON sidecar (``scan.json`` next to ``scan.nii.gz``, as dcm2niix/BIDS write) with DICOM keywords."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    side = path.with_name(name + ".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in _META_KEYWORDS or k == "ExposureMAs"}


def _scan_from_sitk(img, metadata: dict, source: str) -> Scan:
    import SimpleITK as sitk

    spacing = img.GetSpacing()
    if any((not np.isfinite(s)) or s <= 0 for s in spacing):
        raise QCInputError(f"invalid voxel spacing {tuple(round(s, 4) for s in spacing)} mm", source)
    warns = []
    img = sitk.DICOMOrient(img, "LPS")
    direction = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    if not np.allclose(direction, np.eye(3), atol=1e-3):
        angle = np.degrees(np.arccos(np.clip(np.min(np.abs(np.diag(direction))), -1, 1)))
        warns.append(f"oblique orientation ({angle:.1f} deg from axial): metrics use the acquisition grid")
    hu = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    if "FOVCenterLPS" not in metadata:  # file formats: the reconstructed field is the whole grid
        centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()])
        metadata = {**metadata, "FOVCenterLPS": [round(centre[0], 3), round(centre[1], 3)]}
    scan = Scan(
        hu=hu,
        spacing=tuple(reversed(img.GetSpacing())),
        origin=tuple(img.GetOrigin()),
        direction=direction,
        metadata=metadata,
        source=source,
    )
    scan.warnings.extend(warns)
    return scan


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------


def _read_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None


def _series_info(ds, n: int) -> SeriesInfo:
    image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
    sop = str(ds.get("SOPClassUID", ""))
    return SeriesInfo(
        uid=str(ds.get("SeriesInstanceUID", "unknown")),
        modality=str(ds.get("Modality", "")).upper(),
        n_files=n,
        description=str(ds.get("SeriesDescription", "") or ""),
        is_localizer=bool(image_type & _LOCALIZER_WORDS),
        sop_class=sop,
    )


def _load_dicom_file(path: Path, max_memory_gb: float) -> Scan:
    ds = _read_header(path)
    if ds is None:
        raise QCInputError("not a readable DICOM file", path)
    info = _series_info(ds, 1)
    _require_ct(info, path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and not _has_pixel_tag(path):
        raise QCInputError("DICOM file has no pixel data", path)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_memory(rows * cols * frames, max_memory_gb, path)
    img = _sitk_read(path, "DICOM pixel data")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise QCInputError("colour (RGB) DICOM, e.g. a secondary capture: not a CT image", path)
    import SimpleITK as sitk

    warns = []
    if img.GetDimension() == 2 or img.GetSize()[2] == 1:
        if img.GetDimension() == 2:
            img = sitk.JoinSeries(img)
        warns.append("single 2-D slice: z-dependent metrics (coverage) are not measured")
    scan = _scan_from_sitk(img, _dicom_metadata(ds), str(path))
    scan.warnings.extend(warns)
    return scan


def _has_pixel_tag(path: Path) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(path, specific_tags=["PixelData"])
    except Exception:
        return False
    return "PixelData" in ds


def _require_ct(info: SeriesInfo, path) -> None:
    if info.modality and info.modality != "CT":
        what = {"SR": "structured report (e.g. dose report)", "MR": "MR", "PT": "PET", "NM": "nuclear medicine",
                "OT": "other", "SC": "secondary capture", "US": "ultrasound", "CR": "radiograph",
                "DX": "radiograph", "RTSTRUCT": "RT structure set", "SEG": "segmentation"}.get(info.modality, info.modality)
        raise NotCTError(f"modality {info.modality} ({what}), not CT", path)
    if info.is_localizer:
        raise QCInputError("CT localizer/scout image, not a tomographic series", path)
    if info.sop_class and info.sop_class not in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE) and info.modality != "CT":
        raise NotCTError(f"SOP class {info.sop_class} is not a CT image", path)


def _dicom_metadata(ds) -> dict:
    meta: dict = {}
    for kw in _META_KEYWORDS:
        if kw not in ds:
            continue
        val = ds.get(kw)
        if val is None or val == "":
            continue
        if kw in ("WindowCenter", "WindowWidth"):
            vals = list(val) if hasattr(val, "__iter__") and not isinstance(val, str) else [val]
            try:
                meta[kw] = float(vals[0])
                if len(vals) > 1:
                    meta[kw + "All"] = [float(v) for v in vals]
            except (TypeError, ValueError):
                pass
            continue
        if kw in ("DataCollectionCenterPatient", "ReconstructionTargetCenterPatient", "ImageType"):
            meta[kw] = [str(v) if kw == "ImageType" else float(v) for v in val]
            continue
        try:
            meta[kw] = float(val) if kw not in ("Modality", "Manufacturer", "ManufacturerModelName",
                                                "BodyPartExamined", "StudyDate", "StudyDescription",
                                                "ProtocolName", "SeriesDescription", "SeriesInstanceUID",
                                                "ConvolutionKernel", "PatientPosition") else str(val)
        except (TypeError, ValueError):
            meta[kw] = str(val)
    # Tube current-time product: Exposure (mAs) if given, else mA x s.
    if "Exposure" in meta:
        meta["ExposureMAs"] = float(meta["Exposure"])
    elif "XRayTubeCurrent" in meta and "ExposureTime" in meta:
        meta["ExposureMAs"] = float(meta["XRayTubeCurrent"]) * float(meta["ExposureTime"]) / 1000.0
    return meta


def discover_series(folder: Path) -> tuple[dict[str, list[tuple[Path, object]]], int]:
    """Header-only scan of a folder (recursive). Returns {series uid: [(file, header)]} and the count of
    non-DICOM files skipped. Symlinked folders are not followed (no loops)."""
    groups: dict[str, list[tuple[Path, object]]] = {}
    skipped = 0
    for root, _dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(files):
            f = Path(root) / name
            if not f.is_file():
                continue
            ds = _read_header(f)
            if ds is None:
                skipped += 1
                continue
            uid = str(ds.get("SeriesInstanceUID", "unknown"))
            groups.setdefault(uid, []).append((f, ds))
    return groups, skipped


def _load_dicom_dir(folder: Path, series_uid: str | None, max_memory_gb: float) -> Scan:
    groups, skipped = discover_series(folder)
    if not groups:
        image_files = [p for p in folder.rglob("*") if p.is_file() and _is_image_file(p)]
        if len(image_files) == 1:
            return _load_image_file(image_files[0], max_memory_gb)
        why = "empty folder" if skipped == 0 else f"no DICOM files among {skipped} file(s)"
        raise QCInputError(why, folder)
    infos = {uid: _series_info(items[0][1], len(items)) for uid, items in groups.items()}
    if series_uid is not None:
        if series_uid not in groups:
            raise QCInputError(f"series {series_uid} not found; series here: {', '.join(sorted(groups))}", folder)
        chosen = series_uid
        _require_ct(infos[chosen], folder)
    else:
        candidates = [u for u, i in infos.items() if i.modality == "CT" and not i.is_localizer]
        if not candidates:
            if all(i.modality == "CT" for i in infos.values()):
                raise QCInputError("only CT localizer/scout images here, no tomographic series", folder)
            mods = ", ".join(sorted({i.modality or "?" for i in infos.values()}))
            raise NotCTError(f"no CT series (modalities found: {mods})", folder)
        chosen = max(candidates, key=lambda u: infos[u].n_files)
    items = groups[chosen]
    scan = _load_dicom_series(items, folder, max_memory_gb)
    scan.series = list(infos.values())
    others = [i for u, i in infos.items() if u != chosen]
    if others:
        scan.warnings.append(
            f"{len(others)} other series in the folder ignored (use --series UID to pick one): "
            + "; ".join(f"{i.modality} '{i.description}' ({i.n_files} files)" for i in others[:5])
        )
    return scan


def _load_dicom_series(items: list[tuple[Path, object]], folder: Path, max_memory_gb: float) -> Scan:
    warns: list[str] = []
    ds0 = items[0][1]
    if "ImagePositionPatient" not in ds0 or "ImageOrientationPatient" not in ds0:
        if len(items) == 1:
            return _load_dicom_file(items[0][0], max_memory_gb)
        raise QCInputError("DICOM series without ImagePositionPatient/ImageOrientationPatient: cannot order slices", folder)
    iop = np.array([float(v) for v in ds0.ImageOrientationPatient])
    r, c = iop[:3], iop[3:]
    n = np.cross(r, c)
    pos, files, headers = [], [], []
    for f, ds in items:
        if "ImagePositionPatient" not in ds:
            warns.append(f"{f.name}: no ImagePositionPatient, slice skipped")
            continue
        iop_k = np.array([float(v) for v in ds.get("ImageOrientationPatient", iop)])
        if np.max(np.abs(iop_k - iop)) > 1e-3:
            raise QCInputError("slices of one series have different orientations (mixed acquisition)", folder)
        if (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) != (int(ds0.Rows), int(ds0.Columns)):
            raise QCInputError("slices of one series have different matrix sizes", folder)
        pos.append([float(v) for v in ds.ImagePositionPatient])
        files.append(f)
        headers.append(ds)
    pos = np.array(pos)
    s = pos @ n
    order = np.argsort(s, kind="stable")
    pos, s = pos[order], s[order]
    files = [files[i] for i in order]
    headers = [headers[i] for i in order]
    # duplicate positions
    keep = np.ones(len(s), dtype=bool)
    keep[1:] = np.diff(s) > 1e-3
    if not keep.all():
        warns.append(f"{int((~keep).sum())} duplicate slice position(s) dropped")
        pos, s = pos[keep], s[keep]
        files = [f for f, k in zip(files, keep) if k]
        headers = [h for h, k in zip(headers, keep) if k]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    _check_memory(rows * cols * len(files) * 2, max_memory_gb, folder)

    import SimpleITK as sitk

    stack = np.empty((len(files), rows, cols), dtype=np.float32)
    padding = ds0.get("PixelPaddingValue")
    slope = float(ds0.get("RescaleSlope", 1) or 1)
    intercept = float(ds0.get("RescaleIntercept", 0) or 0)
    for k, f in enumerate(files):
        img = _sitk_read(f, "DICOM pixel data")
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise QCInputError("colour (RGB) DICOM in a CT series", f)
        arr = sitk.GetArrayFromImage(img)
        stack[k] = arr.reshape(rows, cols)
    fov_src = stack >= PADDING_BELOW_HU
    if padding is not None:
        try:
            fov_src &= stack != (float(padding) * slope + intercept)
        except (TypeError, ValueError):
            pass

    ps = [float(v) for v in ds0.get("PixelSpacing", [1.0, 1.0])]
    d_row, d_col = ps[0], ps[1]
    meta = _dicom_metadata(ds0)
    mid = pos[len(pos) // 2]
    centre = mid + (cols - 1) / 2 * d_col * r + (rows - 1) / 2 * d_row * c
    meta["FOVCenterLPS"] = [round(float(centre[0]), 3), round(float(centre[1]), 3)]
    thick = sorted({float(h.get("SliceThickness", 0) or 0) for h in headers})
    if len(thick) > 1:
        meta["SliceThicknessAll"] = thick
    if len(files) == 1:
        img = sitk.GetImageFromArray(stack)
        img.SetSpacing((d_col, d_row, float(ds0.get("SliceThickness", 1) or 1)))
        img.SetOrigin(tuple(pos[0]))
        img.SetDirection(tuple(np.column_stack([r, c, n]).ravel()))
        scan = _scan_from_sitk(img, meta, str(folder))
        scan.fov = _fov_from(fov_src, img)
        scan.warnings += warns + ["single 2-D slice: z-dependent metrics (coverage) are not measured"]
        return scan

    travel = pos[-1] - pos[0]
    t_dir = travel / np.linalg.norm(travel)
    tilt = float(np.degrees(np.arccos(np.clip(abs(t_dir @ n), 0, 1))))
    ds_normal = np.diff(s)
    med = float(np.median(ds_normal))
    irregular = bool(np.max(np.abs(ds_normal - med)) > max(0.05 * med, 0.02))
    tilt_tag = ds0.get("GantryDetectorTilt")
    meta["GantryTiltDeg"] = round(tilt, 2)
    if tilt_tag not in (None, ""):
        meta["GantryDetectorTilt"] = float(tilt_tag)
    # A missing slice: a step larger than 1.5x the nominal spacing on both sides of it (slice thickness
    # where given, else the neighbouring steps), so a planned change of thickness is not called a gap.
    th = np.array([float(h.get("SliceThickness", 0) or 0) for h in headers])
    nominal = np.maximum(th[:-1], th[1:]) if np.all(th > 0) else np.full(len(ds_normal), med)
    gaps = int(np.sum(ds_normal > 1.5 * nominal))
    if gaps:
        warns.append(f"{gaps} gap(s) in slice positions larger than 1.5x the slice thickness: missing slices?")
    if tilt > 0.5 or irregular:
        why = []
        if tilt > 0.5:
            why.append(f"gantry tilt {tilt:.1f} deg")
        if irregular:
            why.append(f"irregular slice spacing {ds_normal.min():.2f}-{ds_normal.max():.2f} mm")
        hu, fov, origin, direction, spacing = _resample_stack(stack, fov_src, pos, r, c, d_row, d_col)
        warns.append(" and ".join(why) + f": resampled to a regular untilted grid ({spacing[0]:.2f} mm slices)")
        img = sitk.GetImageFromArray(hu)
        img.SetSpacing(tuple(reversed(spacing)))
        img.SetOrigin(tuple(origin))
        img.SetDirection(tuple(direction.ravel()))
        scan = _scan_from_sitk(img, meta, str(folder))
        fov_img = sitk.GetImageFromArray(fov.astype(np.uint8))
        fov_img.CopyInformation(img)
        scan.fov = sitk.GetArrayFromImage(sitk.DICOMOrient(fov_img, "LPS")).astype(bool)
    else:
        img = sitk.GetImageFromArray(stack)
        img.SetSpacing((d_col, d_row, med))
        img.SetOrigin(tuple(pos[0]))
        img.SetDirection(tuple(np.column_stack([r, c, n]).ravel()))
        scan = _scan_from_sitk(img, meta, str(folder))
        scan.fov = _fov_from(fov_src, img)
    scan.warnings = warns + scan.warnings
    return scan


def _fov_from(fov_src: np.ndarray, img) -> np.ndarray:
    import SimpleITK as sitk

    m = sitk.GetImageFromArray(fov_src.astype(np.uint8))
    m.CopyInformation(img)
    return sitk.GetArrayFromImage(sitk.DICOMOrient(m, "LPS")).astype(bool)


def _resample_stack(stack, fov_src, pos, r, c, d_row, d_col):
    """Resample parallel slices with arbitrary positions (gantry tilt, uneven spacing) onto a regular grid.

    Written here because neither SimpleITK's series reader nor scipy handles a sheared, unevenly spaced
    stack (dcm2niix does it in C). Target frame: e3 = table travel direction, e1 = row direction made
    orthogonal to e3, e2 = e3 x e1; in-plane spacing as acquired, slice spacing = median distance
    between consecutive slice positions. A target point p maps to the fractional slice index f where
    n.p equals the slice plane offset (linear in the sorted offsets), the interpolated slice origin
    P(f), and the in-plane indices (p - P(f)).c / d_row, (p - P(f)).r / d_col; values by trilinear
    interpolation (scipy.ndimage.map_coordinates).
    """
    from scipy.ndimage import map_coordinates

    n = np.cross(r, c)
    s = pos @ n
    travel = pos[-1] - pos[0]
    e3 = travel / np.linalg.norm(travel)
    e1 = r - (r @ e3) * e3
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e3, e1)
    dz = float(np.median(np.linalg.norm(np.diff(pos, axis=0), axis=1)))
    K, R, C = stack.shape
    corners = []
    for P in (pos[0], pos[-1]):
        for i in (0, C - 1):
            for j in (0, R - 1):
                corners.append(P + i * d_col * r + j * d_row * c)
    corners = np.array(corners)
    frame = np.stack([e1, e2, e3])  # rows
    proj = corners @ frame.T
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    spacing_xyz = np.array([d_col, d_row, dz])
    size = np.floor((hi - lo) / spacing_xyz + 1e-6).astype(int) + 1
    origin = lo @ frame  # physical point of target voxel [0,0,0]
    nx, ny, nz = size
    out = np.full((nz, ny, nx), AIR_HU, dtype=np.float32)
    fov = np.zeros((nz, ny, nx), dtype=bool)
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny))
    base = origin + ii[..., None] * d_col * e1 + jj[..., None] * d_row * e2  # (ny, nx, 3)
    kidx = np.arange(K, dtype=float)
    src = np.where(fov_src, stack, AIR_HU)
    fov_f = fov_src.astype(np.float32)
    for k in range(nz):
        p = base + k * dz * e3
        sp = p @ n
        f = np.interp(sp, s, kidx, left=-10.0, right=K + 10.0)
        P = np.stack([np.interp(f, kidx, pos[:, a]) for a in range(3)], axis=-1)
        d = p - P
        u = d @ r / d_col
        v = d @ c / d_row
        coords = np.stack([f, v, u])
        out[k] = map_coordinates(src, coords, order=1, mode="constant", cval=AIR_HU)
        fov[k] = map_coordinates(fov_f, coords, order=1, mode="constant", cval=0.0) > 0.5
    direction = np.column_stack([e1, e2, e3])
    return out, fov, origin, direction, (dz, d_row, d_col)


# ----------------------------------------------------------------------------------------------
# HU sanity and final clean-up
# ----------------------------------------------------------------------------------------------


def _finalise(scan: Scan, path: Path) -> Scan:
    hu = scan.hu
    finite = np.isfinite(hu)
    if not finite.all():
        frac = 1.0 - finite.mean()
        if frac > 0.01:
            raise QCInputError(f"{100 * frac:.1f} % of voxels are NaN/Inf", path)
        scan.warnings.append(f"{int((~finite).sum())} NaN/Inf voxel(s) treated as outside the field of view")
        scan.fov &= finite
        hu[~finite] = AIR_HU
    if min(scan.shape[1:]) < 16:
        raise QCInputError(f"volume too small to assess ({'x'.join(map(str, scan.shape[::-1]))} voxels)", path)
    fov_vals = hu[scan.fov]
    if fov_vals.size == 0 or float(fov_vals.max()) == float(fov_vals.min()):
        raise QCInputError("constant image (every voxel has the same value)", path)
    hu, notes = check_hounsfield(hu, scan.fov, path)
    scan.warnings.extend(notes)
    scan.fov &= hu >= PADDING_BELOW_HU
    hu[~scan.fov] = AIR_HU
    scan.hu = hu
    return scan


def check_hounsfield(hu: np.ndarray, fov: np.ndarray, path=None) -> tuple[np.ndarray, list[str]]:
    """Check that values are Hounsfield units; correct data stored without rescale (air near 0).

    CT-like: the 0.5th percentile of in-FOV values is at or below -700 HU (air or lung present).
    Stored without rescale: that percentile lies in [-60, 150] and, after subtracting 1024, most
    voxels above -500 HU fall in the fat/soft-tissue band [-150, 100] HU; then 1024 is subtracted
    with a warning. A volume normalised to [0, 1] or with another intensity distribution is refused.
    """
    vals = hu[fov]
    if vals.size > 2_000_000:
        vals = vals[:: vals.size // 2_000_000]
    p_lo, p_hi = np.percentile(vals, [0.5, 99.5])
    if p_lo <= -700:
        return hu, []
    if p_hi <= 1.0 + 1e-6 and p_lo >= -1e-6:
        raise NotCTError("intensities normalised to [0, 1]: not Hounsfield units", path)
    if -60 <= p_lo <= 150:
        shifted = vals - 1024.0
        body = shifted[shifted > -500]
        if body.size and np.mean((body >= -150) & (body <= 100)) > 0.5:
            return hu - 1024.0, [
                f"values look stored without rescale (air at {p_lo:.0f} instead of -1000): 1024 subtracted to get HU"
            ]
        raise NotCTError("intensity distribution is not CT-like (no air at -1000 HU, no soft-tissue peak)", path)
    if p_lo > -700 and np.median(vals) > -200:
        return hu, [f"no air or lung in the image (lowest values {p_lo:.0f} HU): cropped inside the body?"]
    raise NotCTError(f"intensity distribution is not CT-like (0.5th percentile {p_lo:.0f})", path)
