"""Loading CT volumes into one canonical form.

Canonical orientation (every ``Scan``):

* ``scan.hu`` is an array indexed ``[z, y, x]`` (slice, row, column) in Hounsfield units: ``int16`` when the
  stored values are integers that fit (the usual CT file: integer pixels, integer slope/intercept; exact and half
  the memory of float32), else ``float32``. Metrics must not assume a float dtype: no in-place float arithmetic on
  it, and filters (``scipy.ndimage``) get a float copy of the slice or region they need, since they return the
  input's dtype (see :func:`hu_dtype_for`);
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
  -1024 HU (air) in ``scan.hu`` so that no metric sees impossible values. When the field of view is the
  same on every slice (the usual case) ``scan.fov`` is a **read-only** ``np.broadcast_to`` view of one 2-D
  slice mask (no full 3-D copy): read it freely, copy it (``np.array(scan.fov)``) before modifying it.

Memory: a volume is read once (NIfTI pixels with nibabel, which also detects truncated files and keeps NaN;
geometry from nibabel's header where ITK would read it the same way, so that SimpleITK is not even imported,
else from SimpleITK's header reader), re-oriented to LPS with numpy views when the axes are aligned with the
patient frame, and kept as int16 (integer data) or converted to ``float32`` once; see
``benchmarks/bench_memory.py``.

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
INT16_MIN, INT16_MAX = -32768, 32767


def hu_dtype_for(arr: np.ndarray):
    """The dtype ``scan.hu`` gets for stored values ``arr``: int16 when they are integers within the int16 range
    (exact: CT values are integers in [-1024, 3071], or up to ~30000 with extended-range metal), else float32."""
    if arr.dtype == np.int16 or arr.dtype in (np.int8, np.uint8):
        return np.int16
    if arr.dtype.kind in "iu" and arr.size and INT16_MIN <= int(arr.min()) and int(arr.max()) <= INT16_MAX:
        return np.int16
    return np.float32


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
        hu = np.asarray(self.hu)
        # int16 is kept (exact, half the memory); everything else becomes float32 as before
        self.hu = hu if hu.dtype == np.int16 else hu.astype(np.float32, copy=False)
        if self.hu.ndim != 3:
            raise QCInputError(f"expected a 3-D volume, got {self.hu.ndim}-D", self.source or None)
        self.spacing = tuple(float(s) for s in self.spacing)
        if self.fov is None:  # every voxel measured: a read-only view, no memory
            self.fov = np.broadcast_to(np.True_, self.hu.shape)

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


class _NiftiHeaderGeometry:
    """The part of ``sitk.ImageFileReader``'s interface that :func:`_scan_from_header_and_pixels` reads, from a
    NIfTI header parsed by nibabel: a plain 3-D scalar volume only (see :func:`_plain_nifti_geometry`)."""

    def __init__(self, size, spacing, origin, direction):
        self._size, self._spacing, self._origin, self._direction = size, spacing, origin, direction

    def GetDimension(self):
        return 3

    def GetSize(self):
        return self._size

    def GetSpacing(self):
        return self._spacing

    def GetOrigin(self):
        return self._origin

    def GetDirection(self):
        return self._direction


def _plain_nifti_geometry(path: Path) -> _NiftiHeaderGeometry | None:
    """ITK's geometry of a plain NIfTI volume from its header alone, without importing SimpleITK (~96 MiB of
    resident memory, 2/3 of a 512 x 512 x 300 int16 volume: see benchmarks/bench_memory.py). Only where ITK's
    reading is unambiguous: 3-D, one scalar component, qform and sform both set and equal, and axes along the
    patient axes (each direction column a signed unit vector). Then ITK's spacing is pixdim, its direction the
    sform's columns divided by pixdim and its origin the sform's offset, RAS -> LPS (x, y negated), exactly
    (tests/test_memory.py compares all 48 axis orders and signs with SimpleITK's reader). None for anything else:
    the caller reads the header with SimpleITK as before (same geometry and the same error messages)."""
    import logging

    import nibabel as nib

    logging.getLogger("nibabel").setLevel(logging.ERROR)
    try:
        hdr = nib.load(str(path), mmap=False).header
        if not isinstance(hdr, nib.Nifti1Header) or int(hdr["dim"][0]) != 3 or hdr.get_data_dtype().fields:
            return None
        if np.dtype(hdr.get_data_dtype()).kind not in "iuf":
            return None
        if int(hdr["qform_code"]) <= 0 or int(hdr["sform_code"]) <= 0:
            return None
        sform, qform = hdr.get_sform(), hdr.get_qform()
        size = tuple(int(v) for v in hdr["dim"][1:4])
        zooms = np.array([float(v) for v in hdr["pixdim"][1:4]])
    except Exception:  # noqa: BLE001 - anything unusual: SimpleITK decides, as before
        return None
    if not (np.all(np.isfinite(sform)) and np.all(zooms > 0) and np.allclose(sform, qform, rtol=0, atol=1e-4)):
        return None
    flip = np.array([-1.0, -1.0, 1.0])
    direction = flip[:, None] * sform[:3, :3] / zooms[None, :]
    if not (np.all(np.isin(direction, (-1.0, 0.0, 1.0))) and np.all(np.abs(direction).sum(axis=0) == 1.0)
            and np.all(np.abs(direction).sum(axis=1) == 1.0)):
        return None  # oblique (or inexact): ITK's own reading
    origin = flip * sform[:3, 3]
    return _NiftiHeaderGeometry(size, tuple(float(v) for v in zooms), tuple(float(v) for v in origin),
                                tuple(float(v) for v in direction.ravel()))


def _load_image_file(path: Path, max_memory_gb: float) -> Scan:
    if path.name.lower().endswith((".nii", ".nii.gz")):
        geom = _plain_nifti_geometry(path)
        if geom is not None:
            _check_memory(int(np.prod(geom.GetSize())), max_memory_gb, path)
            data = _nifti_pixels(path)  # integrity checks + the pixels, read once
            scan = _scan_from_header_and_pixels(geom, data, _sidecar_metadata(path), str(path))
            if scan is not None:
                return scan
            del data
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
    metadata = _sidecar_metadata(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        data = _nifti_pixels(path)  # integrity checks + the pixels, read once
        scan = _scan_from_header_and_pixels(reader, data, metadata, str(path))
        if scan is not None:
            return scan
        del data  # header and data disagree on the grid (unusual NIfTI): ITK reads and places the pixels
    img = _sitk_read(path)
    warns = []
    if img.GetDimension() == 4:
        img = img[:, :, :, 0]
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
        warns.append("single 2-D slice: z-dependent metrics (coverage) are not measured")
    scan = _scan_from_sitk(img, metadata, str(path))
    scan.warnings.extend(warns)
    return scan


def _scan_from_header_and_pixels(reader, data: np.ndarray, metadata: dict, source: str) -> Scan | None:
    """A Scan from ITK's header geometry (``reader`` after ReadImageInformation) and the stored pixels ``data``
    (x fastest, as nibabel indexes them); None when the two disagree on the grid (then ITK reads the pixels)."""
    dim = reader.GetDimension()
    size = tuple(reader.GetSize())
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != min(dim, 3) or data.shape != size[: data.ndim]:
        return None
    warns = []
    spacing = list(reader.GetSpacing())[:3]
    origin = list(reader.GetOrigin())[:3]
    d = np.array(reader.GetDirection(), dtype=float).reshape(dim, dim)
    direction = np.eye(3)
    n = min(dim, 3)
    direction[:n, :n] = d[:n, :n]
    if data.ndim == 2:
        data = data[:, :, None]
        spacing, origin = spacing + [1.0], origin + [0.0]
        warns.append("single 2-D slice: z-dependent metrics (coverage) are not measured")
    scan = _scan_from_array(data.T, spacing, origin, direction, metadata, source)
    scan.warnings.extend(warns)
    return scan


def _nifti_pixels(path: Path) -> np.ndarray:
    """The voxels of a NIfTI file as stored (x fastest: shape (x, y, z[, ...])), with the integrity checks that
    ITK's NIfTI reader skips: a truncated (gzip) file reads as zeros there, zero or negative pixdim becomes
    1 mm, NaN becomes 0. nibabel reads the pixels once (it raises on a short file and keeps NaN); scl_slope and
    scl_inter are applied in float32, as ITK applies them."""
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
        img = nib.load(str(path), mmap=False)
    except Exception as exc:  # struct/gzip/nibabel raise several types for a broken header
        raise QCInputError(f"cannot read NIfTI header ({type(exc).__name__})", path) from None
    zooms = pixdim[1 : 1 + min(3, max(ndim, 1))]
    if any((not np.isfinite(z)) or z <= 0 for z in zooms):
        raise QCInputError(f"invalid voxel spacing {tuple(round(z, 4) for z in zooms)} mm in the NIfTI header", path)
    proxy = img.dataobj
    try:
        data = np.asanyarray(proxy.get_unscaled())
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError on truncated/corrupt data
        raise QCInputError(f"cannot read image data: truncated or corrupt file ({type(exc).__name__})", path) from None
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if slope == 1.0 and inter != 0.0 and inter.is_integer() and data.dtype.kind in "iu" and data.size:
        lo, hi = float(data.min()) + inter, float(data.max()) + inter
        if INT16_MIN <= lo and hi <= INT16_MAX:  # e.g. uint16 with intercept -1024: exact in int16, no float copy
            out = np.empty_like(data, dtype=np.int16)  # same memory order as data
            np.add(data, np.int32(inter), out=out, dtype=np.int32, casting="unsafe")  # int32 in buffered chunks
            return out
    if slope != 1.0 or inter != 0.0:
        data = data.astype(np.float32)
        data *= np.float32(slope)
        data += np.float32(inter)
    return data


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

    direction = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    return _scan_from_array(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), direction, metadata,
                            source)


def _orient_lps(shape_zyx, spacing_xyz, origin, direction):
    """How to show an array [z, y, x] with ITK geometry in LPS order with numpy views: ``(axes, flips,
    spacing_xyz, origin, direction)`` to apply as ``arr.transpose(axes)[flips]``, or None when an axis is not
    clearly dominated by one patient axis (oblique by more than ~40 deg), where ITK's DICOMOrient decides.

    Same result as ``sitk.DICOMOrient(img, 'LPS')`` (tests/test_memory.py checks all 48 axis-aligned
    orientations and obliques): array axis a (ITK order x, y, z) maps to the patient axis p(a) where its
    direction cosine is largest, flipped when that cosine is negative; the new direction has the permuted,
    sign-corrected columns, the new origin is the physical point of the new voxel [0, 0, 0]."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    p = np.argmax(np.abs(d), axis=0)
    if sorted(p) != [0, 1, 2] or np.min(np.abs(d[p, [0, 1, 2]])) < 0.75:
        return None
    size_xyz = np.array(shape_zyx[::-1])
    sp = np.asarray(spacing_xyz, dtype=float)
    sign = np.sign(d[p, [0, 1, 2]])
    src_of = np.argsort(p)  # new ITK axis b <- old ITK axis src_of[b]
    new_origin = np.asarray(origin, dtype=float) + d @ (sp * np.where(sign < 0, size_xyz - 1, 0))
    new_dir = d[:, src_of] * sign[src_of]
    axes = tuple(2 - int(src_of[2 - m]) for m in range(3))  # numpy axis m of the new array <- old numpy axis
    flips = tuple(slice(None, None, -1) if sign[src_of[2 - m]] < 0 else slice(None) for m in range(3))
    return axes, flips, tuple(float(v) for v in sp[src_of]), tuple(float(v) for v in new_origin), new_dir


def _scan_from_array(arr: np.ndarray, spacing_xyz, origin, direction, metadata: dict, source: str,
                     fov: np.ndarray | None = None) -> Scan:
    """A Scan in LPS from an array [z, y, x] with ITK geometry (spacing/origin in x, y, z order; direction columns
    = the physical directions of the x, y, z array axes). ``arr`` is converted to float32 once (no copy when it
    already is float32 and in LPS order); ``fov`` (same grid, or None) is re-oriented with it."""
    spacing_xyz = tuple(float(v) for v in spacing_xyz)
    if any((not np.isfinite(s)) or s <= 0 for s in spacing_xyz):
        raise QCInputError(f"invalid voxel spacing {tuple(round(s, 4) for s in spacing_xyz)} mm", source)
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    if "FOVCenterLPS" not in metadata:  # file formats: the reconstructed field is the whole grid
        centre = np.asarray(origin, dtype=float) + direction @ (
            np.asarray(spacing_xyz) * (np.array(arr.shape[::-1], dtype=float) - 1) / 2)
        metadata = {**metadata, "FOVCenterLPS": [round(float(centre[0]), 3), round(float(centre[1]), 3)]}
    plan = _orient_lps(arr.shape, spacing_xyz, origin, direction)
    if plan is None:
        hu, fov, spacing_xyz, origin, direction = _orient_with_itk(arr, spacing_xyz, origin, direction, fov)
    else:
        axes, flips, spacing_xyz, origin, direction = plan
        hu = np.ascontiguousarray(arr.transpose(axes)[flips], dtype=hu_dtype_for(arr))
        if fov is not None:
            fov = fov.transpose(axes)[flips]
    del arr
    warns = []
    if not np.allclose(direction, np.eye(3), atol=1e-3):
        angle = np.degrees(np.arccos(np.clip(np.min(np.abs(np.diag(direction))), -1, 1)))
        warns.append(f"oblique orientation ({angle:.1f} deg from axial): metrics use the acquisition grid")
    scan = Scan(hu=hu, spacing=tuple(reversed(spacing_xyz)), origin=tuple(origin), direction=direction,
                metadata=metadata, source=source, fov=None if fov is None else compact_fov(fov))
    scan.warnings.extend(warns)
    return scan


def _orient_with_itk(arr, spacing_xyz, origin, direction, fov):
    import SimpleITK as sitk

    def orient(a):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing(spacing_xyz)
        img.SetOrigin(tuple(float(v) for v in origin))
        img.SetDirection(tuple(direction.ravel()))
        return sitk.DICOMOrient(img, "LPS")

    img = orient(arr)
    hu = sitk.GetArrayFromImage(img)
    hu = hu.astype(hu_dtype_for(hu), copy=False)
    if fov is not None:
        fov = sitk.GetArrayFromImage(orient(np.asarray(fov, dtype=np.uint8))).astype(bool)
    return hu, fov, img.GetSpacing(), img.GetOrigin(), np.array(img.GetDirection(), dtype=float).reshape(3, 3)


def _fov_plane(fov: np.ndarray) -> np.ndarray | None:
    """The 2-D mask when ``fov`` is the same on every slice as a broadcast view, else None."""
    return fov[0] if fov.ndim == 3 and fov.strides[0] == 0 else None


def compact_fov(fov: np.ndarray) -> np.ndarray:
    """``fov`` as a read-only broadcast of one slice when every slice is the same (no full 3-D copy), else a
    bool array as given."""
    fov = np.asarray(fov, dtype=bool)
    if fov.ndim != 3 or fov.strides[0] == 0:
        return fov
    first = fov[0]
    if all(np.array_equal(first, fov[k]) for k in range(1, fov.shape[0])):
        return np.broadcast_to(np.array(first), fov.shape)
    return fov


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------


def _read_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None


def is_localizer(ds) -> bool:
    """True for a CT localizer/scout/topogram image (ImageType holds LOCALIZER, SCOUT, TOPOGRAM...)."""
    try:
        words = {str(v).upper() for v in (ds.get("ImageType") or [])}
    except TypeError:
        words = {str(ds.get("ImageType")).upper()}
    return bool(words & _LOCALIZER_WORDS)


def split_localizers(items: list) -> tuple[list, int]:
    """Drop localizer images from a series that also holds tomographic images (some scanners give the scout
    the series UID of the axial images, often as its first file). Returns (items kept, number dropped); a
    series of localizers only is returned whole (and refused later as a localizer)."""
    tomo = [it for it in items if not is_localizer(it[1])]
    if not tomo or len(tomo) == len(items):
        return items, 0
    return tomo, len(items) - len(tomo)


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
    n_localizers = {}
    for uid in list(groups):
        groups[uid], n_localizers[uid] = split_localizers(groups[uid])
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
    if n_localizers[chosen]:
        scan.warnings.append(f"{n_localizers[chosen]} localizer/scout image(s) in the series ignored")
    scan.series = list(infos.values())
    others = [i for u, i in infos.items() if u != chosen]
    if others:
        scan.warnings.append(
            f"{len(others)} other series in the folder ignored (use --series UID to pick one): "
            + "; ".join(f"{i.modality} '{i.description}' ({i.n_files} files)" for i in others[:5])
        )
    return scan


def load_dicom_files(files, source=None, max_memory_gb: float | None = None) -> Scan:
    """Load one DICOM series from the explicit list of its files (as `qc audit` found them at discovery):
    only these files' headers are read, not those of the whole folder (a flat dump of many series would
    otherwise be re-read once per series). Localizer images among them are dropped (with a warning).
    ``source`` names the series in messages (default: the folder holding the files)."""
    files = [Path(f) for f in files]
    if not files:
        raise QCInputError("no DICOM file given", source)
    folder = Path(source) if source is not None else Path(os.path.commonpath([str(f.parent) for f in files]))
    if max_memory_gb is None:
        max_memory_gb = float(os.environ.get("QC_MAX_MEMORY_GB", DEFAULT_MAX_MEMORY_GB))
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise QCInputError("file of the series no longer exists", missing[0])
    items = [(f, ds) for f in files if (ds := _read_header(f)) is not None]
    if not items:
        raise QCInputError("no readable DICOM file in the series", folder)
    items, n_loc = split_localizers(items)
    _require_ct(_series_info(items[0][1], len(items)), folder)
    scan = _load_dicom_series(items, folder, max_memory_gb)
    if n_loc:
        scan.warnings.append(f"{n_loc} localizer/scout image(s) in the series ignored")
    return _finalise(scan, folder)


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

    # int16 while every slice's rescaled values are integers that fit (the usual CT series: half the memory of
    # float32, exact); a slice with fractional or out-of-range values turns the whole stack into float32
    stack = np.empty((len(files), rows, cols), dtype=np.int16)
    padding = ds0.get("PixelPaddingValue")
    slope = float(ds0.get("RescaleSlope", 1) or 1)
    intercept = float(ds0.get("RescaleIntercept", 0) or 0)
    for k, f in enumerate(files):
        try:
            img = _sitk_read(f, "DICOM pixel data")
        except QCInputError:
            if not _has_pixel_tag(f):
                raise QCInputError("DICOM file has no pixel data", f) from None
            raise
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise QCInputError("colour (RGB) DICOM in a CT series", f)
        arr = sitk.GetArrayFromImage(img)
        if stack.dtype == np.int16 and hu_dtype_for(arr) != np.int16:
            stack = stack.astype(np.float32)
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
        scan = _scan_from_array(stack, (d_col, d_row, float(ds0.get("SliceThickness", 1) or 1)), tuple(pos[0]),
                                np.column_stack([r, c, n]), meta, str(folder), fov=fov_src)
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
        del stack, fov_src
        warns.append(" and ".join(why) + f": resampled to a regular untilted grid ({spacing[0]:.2f} mm slices)")
        scan = _scan_from_array(hu, tuple(reversed(spacing)), tuple(origin), direction, meta, str(folder), fov=fov)
    else:
        scan = _scan_from_array(stack, (d_col, d_row, med), tuple(pos[0]), np.column_stack([r, c, n]), meta,
                                str(folder), fov=fov_src)
    scan.warnings = warns + scan.warnings
    return scan


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
    src = np.where(fov_src, stack, np.float32(AIR_HU))  # float32 for a float32 or an int16 stack
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


def _all_true(fov: np.ndarray) -> bool:
    """True for the read-only all-True view of a scan where every voxel was measured (no scan of the mask)."""
    return fov.size > 0 and all(st == 0 for st in fov.strides) and bool(fov.flat[0])


def _finalise(scan: Scan, path: Path) -> Scan:
    """NaN/Inf, size, constant-image and Hounsfield checks; voxels outside the field of view (and padding below
    -1200 HU) set to air. Works in place on ``scan.hu``: no full-volume temporaries except where NaN or padding
    voxels must be masked."""
    hu = scan.hu
    fov = scan.fov
    if not (np.isfinite(hu.min()) and np.isfinite(hu.max())):  # min/max propagate NaN: no mask unless needed
        bad = ~np.isfinite(hu)
        frac = float(bad.mean())
        if frac > 0.01:
            raise QCInputError(f"{100 * frac:.1f} % of voxels are NaN/Inf", path)
        scan.warnings.append(f"{int(bad.sum())} NaN/Inf voxel(s) treated as outside the field of view")
        hu[bad] = AIR_HU
        fov = np.logical_and(fov, np.logical_not(bad, out=bad), out=bad)
        del bad
    if min(scan.shape[1:]) < 16:
        raise QCInputError(f"volume too small to assess ({'x'.join(map(str, scan.shape[::-1]))} voxels)", path)
    if _all_true(fov):
        vmin, vmax = float(hu.min()), float(hu.max())
    else:
        lo, hi = (np.iinfo(hu.dtype).min, np.iinfo(hu.dtype).max) if hu.dtype.kind in "iu" else (-np.inf, np.inf)
        vmin = float(np.min(hu, where=fov, initial=hi))  # an integer initial for int16 (inf does not convert)
        vmax = float(np.max(hu, where=fov, initial=lo))
    if not vmax > vmin:
        raise QCInputError("constant image (every voxel has the same value)", path)
    hu, notes = check_hounsfield(hu, fov, path, inplace=True)
    scan.warnings.extend(notes)
    if float(hu.min()) < PADDING_BELOW_HU:  # padding values (e.g. -2048, -3024) are outside the field of view
        low = hu < PADDING_BELOW_HU
        fov = np.logical_and(fov, np.logical_not(low, out=low), out=low)
        del low
    plane = _fov_plane(fov)
    if _all_true(fov):
        pass
    elif plane is not None:
        outside = ~plane
        for k in range(hu.shape[0]):
            hu[k][outside] = AIR_HU
    else:
        np.copyto(hu, hu.dtype.type(AIR_HU), where=~fov)
    scan.hu = hu
    scan.fov = compact_fov(fov)
    return scan


def _fov_sample(hu: np.ndarray, fov: np.ndarray, n: int = 2_000_000) -> np.ndarray:
    """The in-FOV values of ``hu`` in raster order, every k-th one when there are more than ``n``
    (k = count // n): the same sample as ``hu[fov][::k]``, without the full-volume copy of ``hu[fov]``."""
    nz = hu.shape[0]
    if _all_true(fov):
        step = hu.size // n if hu.size > n else 1
        return hu.reshape(-1)[::step]
    flat = hu.reshape(nz, -1)
    plane = _fov_plane(fov)
    if plane is not None:  # the same field on every slice: index it
        idx = np.flatnonzero(plane)
        total = nz * idx.size
        step = total // n if total > n else 1
        if step == 1:
            return flat[:, idx].reshape(-1)
        t = np.arange(0, total, step)
        return flat[t // idx.size, idx[t % idx.size]]
    fov = np.asarray(fov)
    total = int(np.count_nonzero(fov))
    step = total // n if total > n else 1
    if step == 1:
        return hu[fov]
    out, offset = [], 0
    for k in range(nz):  # slice by slice: keep the in-FOV voxels whose rank is a multiple of step
        v = hu[k][fov[k]]
        out.append(v[(-offset) % step :: step])
        offset += v.size
    return np.concatenate(out)


def check_hounsfield(hu: np.ndarray, fov: np.ndarray, path=None, inplace: bool = False) -> tuple[np.ndarray, list[str]]:
    """Check that values are Hounsfield units; correct data stored without rescale (air near 0).

    CT-like: the 0.5th percentile of in-FOV values is at or below -700 HU (air or lung present).
    Stored without rescale: that percentile lies in [-60, 150] and, after subtracting 1024, most
    voxels above -500 HU fall in the fat/soft-tissue band [-150, 100] HU; then 1024 is subtracted
    with a warning (in ``hu`` itself when ``inplace``). A volume normalised to [0, 1] or with another
    intensity distribution is refused. Percentiles are taken on about 2 million in-FOV voxels (every k-th).
    """
    vals = _fov_sample(hu, fov)
    if vals.size == 0:  # a field of view smaller than the sampling step
        vals = hu[np.broadcast_to(fov, hu.shape)]
    p_lo, p_hi = np.percentile(vals, [0.5, 99.5])
    if p_lo <= -700:
        return hu, []
    if p_hi <= 1.0 + 1e-6 and p_lo >= -1e-6:
        raise NotCTError("intensities normalised to [0, 1]: not Hounsfield units", path)
    if -60 <= p_lo <= 150:
        shifted = vals - 1024.0
        body = shifted[shifted > -500]
        if body.size and np.mean((body >= -150) & (body <= 100)) > 0.5:
            one_k = hu.dtype.type(1024)
            if hu.dtype.kind == "i" and int(hu.min()) - 1024 < np.iinfo(hu.dtype).min:
                hu = hu.astype(np.float32) - np.float32(1024.0)  # would wrap around in int16: float32 instead
            elif inplace:
                hu -= one_k
            else:
                hu = hu - one_k
            return hu, [
                f"values look stored without rescale (air at {p_lo:.0f} instead of -1000): 1024 subtracted to get HU"
            ]
        raise NotCTError("intensity distribution is not CT-like (no air at -1000 HU, no soft-tissue peak)", path)
    if p_lo > -700 and np.median(vals) > -200:
        return hu, [f"no air or lung in the image (lowest values {p_lo:.0f} HU): cropped inside the body?"]
    raise NotCTError(f"intensity distribution is not CT-like (0.5th percentile {p_lo:.0f})", path)
