"""Loader: formats, canonical orientation, DICOM series selection, tilt, HU sanity, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from phantoms.dicom import write_dicom_series
from qc.errors import NotCTError, QCInputError
from qc.io import Scan, check_hounsfield, load_scan
from tests.conftest import shared_path


def test_nifti_and_dicom_round_trip_identical(head_files, head_phantom):
    nii = load_scan(head_files["scan"])
    dcm = load_scan(head_files["dicom"])
    assert nii.shape == dcm.shape == head_phantom.scan.shape
    assert np.array_equal(nii.hu, dcm.hu)
    assert np.array_equal(nii.hu, head_phantom.scan.hu)
    np.testing.assert_allclose(nii.spacing, dcm.spacing, rtol=0, atol=1e-5)
    np.testing.assert_allclose(nii.origin, dcm.origin, atol=1e-3)
    assert not nii.warnings and not dcm.warnings


def test_dicom_metadata_extracted(head_files, head_phantom):
    meta = load_scan(head_files["dicom"]).metadata
    t = head_phantom.truth
    assert meta["Modality"] == "CT"
    assert meta["KVP"] == 120.0
    assert meta["ExposureMAs"] == pytest.approx(t["mas"])
    assert meta["CTDIvol"] == pytest.approx(t["ctdivol_mgy"])
    assert meta["ConvolutionKernel"] == "STANDARD"
    assert (meta["WindowCenter"], meta["WindowWidth"]) == (40.0, 80.0)
    assert meta["SliceThickness"] == pytest.approx(t["slice_mm"])
    assert "PatientName" not in meta and "PatientID" not in meta


def test_nifti_sidecar_metadata(head_files):
    meta = load_scan(head_files["scan"]).metadata
    assert meta["CTDIvol"] == pytest.approx(60.0)  # 400 mAs x 0.15 mGy/mAs
    assert meta["WindowWidth"] == 80.0


def test_canonical_orientation_from_ras_flipped_file(tmp_path, head_phantom):
    """A file stored with flipped axes (RAS-like direction) loads into the same LPS array."""
    img = head_phantom.scan.to_sitk()
    flipped = sitk.Flip(img, [True, True, False])  # flips data and direction: same physical image
    assert flipped.GetDirection()[0] == -1.0
    sitk.WriteImage(sitk.Cast(flipped, sitk.sitkInt16), str(tmp_path / "ras.nrrd"))
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16), str(tmp_path / "lps.mha"))
    a, b = load_scan(tmp_path / "ras.nrrd"), load_scan(tmp_path / "lps.mha")
    assert np.array_equal(a.hu, b.hu)
    assert np.allclose(a.direction, np.eye(3))
    # slice index increases towards superior
    z = a.z_positions_mm()
    assert z[-1] > z[0]


def test_folder_picks_largest_ct_series_and_lists_others(tmp_path, head_phantom):
    small = Scan(hu=head_phantom.scan.hu[:5], spacing=head_phantom.scan.spacing, origin=head_phantom.scan.origin,
                 metadata=head_phantom.scan.metadata, source="small")
    write_dicom_series(head_phantom.scan, tmp_path / "a", seed=1)
    write_dicom_series(small, tmp_path / "b", seed=2)
    (tmp_path / "notes.txt").write_text("not dicom")
    scan = load_scan(tmp_path)
    assert scan.shape[0] == head_phantom.scan.shape[0]
    assert len(scan.series) == 2
    assert any("other series" in w for w in scan.warnings)
    other = next(s.uid for s in scan.series if s.n_files == 5)
    picked = load_scan(tmp_path, series_uid=other)
    assert picked.shape[0] == 5
    with pytest.raises(QCInputError, match="not found"):
        load_scan(tmp_path, series_uid="1.2.3.4")


def test_non_ct_modality_refused(tmp_path, head_phantom):
    small = Scan(hu=head_phantom.scan.hu[:3], spacing=head_phantom.scan.spacing, origin=head_phantom.scan.origin,
                 metadata={}, source="mr")
    write_dicom_series(small, tmp_path / "mr", extra={"Modality": "MR"})
    with pytest.raises(NotCTError, match="no CT series .modalities found: MR"):
        load_scan(tmp_path / "mr")
    with pytest.raises(NotCTError, match="modality MR"):
        load_scan(next((tmp_path / "mr").iterdir()))


def test_localizer_only_refused(tmp_path, head_phantom):
    small = Scan(hu=head_phantom.scan.hu[:2], spacing=head_phantom.scan.spacing, metadata={}, source="loc")
    write_dicom_series(small, tmp_path / "loc", extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    with pytest.raises(QCInputError, match="localizer"):
        load_scan(tmp_path / "loc")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing.nii.gz", "no such file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "empty folder"),
        (lambda p: (p / "x.txt").write_text("hello") and p / "x.txt", "not a supported image"),
        (lambda p: (p / "t.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage") and p / "t.nii.gz", "cannot read"),
        (lambda p: ((p / "d").mkdir(), (p / "d" / "a.txt").write_text("x"))[0] or p / "d", "no DICOM files"),
    ],
)
def test_bad_paths_give_clear_errors(tmp_path, make, match):
    with pytest.raises(QCInputError, match=match) as err:
        load_scan(make(tmp_path))
    assert "\n" not in str(err.value)


def test_memory_limit_refuses_before_reading(head_files):
    with pytest.raises(QCInputError, match="GiB"):
        load_scan(head_files["scan"], max_memory_gb=0.001)


def test_values_stored_without_rescale_are_corrected(tmp_path, head_phantom):
    img = head_phantom.scan.to_sitk() + 1024.0
    sitk.WriteImage(sitk.Cast(img, sitk.sitkInt16), str(tmp_path / "raw.nii.gz"))
    scan = load_scan(tmp_path / "raw.nii.gz")
    assert any("without rescale" in w for w in scan.warnings)
    assert np.array_equal(scan.hu, head_phantom.scan.hu)


def test_normalised_and_constant_images_refused(tmp_path, head_phantom):
    norm = (head_phantom.scan.hu + 1024.0) / 4095.0
    img = sitk.GetImageFromArray(norm.astype(np.float32))
    sitk.WriteImage(img, str(tmp_path / "norm.nii.gz"))
    with pytest.raises(NotCTError, match=r"\[0, 1\]"):
        load_scan(tmp_path / "norm.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 32, 32), np.int16)), str(tmp_path / "const.nii.gz"))
    with pytest.raises(QCInputError, match="constant"):
        load_scan(tmp_path / "const.nii.gz")


def test_check_hounsfield_accepts_real_ct_ranges():
    rng = np.random.default_rng(0)
    hu = np.concatenate([np.full(5000, -1000.0), rng.normal(40, 10, 20000)]).reshape(1, 1, -1).astype(np.float32)
    out, notes = check_hounsfield(hu, np.ones(hu.shape, bool))
    assert notes == [] and out is hu


def test_synthetic_gantry_tilt_is_undone(tmp_path):
    """Sample a phantom along 15-degree tilted planes, write it as a tilted DICOM series, load it, and compare
    with the phantom on the phantom's own grid."""
    from scipy.ndimage import binary_erosion, gaussian_gradient_magnitude, map_coordinates

    from phantoms import simulate

    ph = simulate("head", seed=5, noise=False, slice_mm=1.0, z_start=-20, z_end=40)
    vol = ph.noise_free.astype(np.float32)
    dz, dy, dx = ph.scan.spacing
    x0, y0, z0 = ph.scan.origin
    theta = np.radians(15.0)
    r = np.array([1.0, 0.0, 0.0])
    c = np.array([0.0, np.cos(theta), -np.sin(theta)])
    n_rows = n_cols = vol.shape[1]
    step = 2.0
    zs = np.arange(z0 + 35.0, z0 + 35.0 + 12 * step, step)  # 12 tilted slices, table steps 2 mm in z
    positions, slices = [], []
    jj, ii = np.mgrid[0:n_rows, 0:n_cols]
    for zk in zs:
        ipp = np.array([x0, y0 + 25.0, zk])
        pts = ipp[:, None, None] + ii[None] * dx * r[:, None, None] + jj[None] * dy * c[:, None, None]
        idx = [(pts[2] - z0) / dz, (pts[1] - y0) / dy, (pts[0] - x0) / dx]
        slices.append(map_coordinates(vol, idx, order=1, cval=-1024.0))
        positions.append(ipp)
    tilted = Scan(hu=np.stack(slices), spacing=(step, dy, dx), origin=(x0, y0, zs[0]), metadata={}, source="tilt")
    write_dicom_series(tilted, tmp_path / "tilt", orientation=list(r) + list(c), positions=positions,
                       extra={"GantryDetectorTilt": "15"})
    scan = load_scan(tmp_path / "tilt")
    assert scan.metadata["GantryTiltDeg"] == pytest.approx(15.0, abs=0.05)
    assert any("gantry tilt 15.0" in w for w in scan.warnings)
    assert scan.spacing[0] == pytest.approx(step, abs=1e-3)
    # compare on the phantom grid, inside the measured region away from its slab edges
    ref = sitk.GetImageFromArray(vol)
    ref.SetSpacing((dx, dy, dz))
    ref.SetOrigin((x0, y0, z0))
    back = sitk.GetArrayFromImage(sitk.Resample(scan.to_sitk(), ref, sitk.Transform(), sitk.sitkLinear, -2000.0))
    fov = sitk.GetImageFromArray(scan.fov.astype(np.uint8))
    fov.CopyInformation(scan.to_sitk())
    inside = sitk.GetArrayFromImage(sitk.Resample(fov, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    inside = binary_erosion(inside, iterations=3) & (vol > -500)
    smooth = inside & (gaussian_gradient_magnitude(vol, 1.0) < 30)
    assert smooth.sum() > 20000
    err = np.abs(back - vol)
    # measured: mean 8.9 HU over all tissue (edges double-interpolated), 0.19 HU in smooth tissue; an
    # orthogonal stack that ignores the shear gives 76 and 11 HU.
    assert np.mean(err[inside]) < 15.0, np.mean(err[inside])
    assert np.mean(err[smooth]) < 1.0, np.mean(err[smooth])


def test_shared_ge_head_tilt_and_uneven_spacing():
    scan = load_scan(shared_path("head_ct_ge_tilted"))
    assert scan.metadata["GantryTiltDeg"] == pytest.approx(18.5, abs=0.1)
    assert scan.metadata["GantryDetectorTilt"] == pytest.approx(18.5)
    assert any("gantry tilt 18.5" in w and "irregular slice spacing" in w for w in scan.warnings)
    assert not any("missing slices" in w for w in scan.warnings)  # 4 -> 7 mm is a planned change, not a gap
    assert np.allclose(scan.direction, np.eye(3))
    assert scan.metadata["ExposureMAs"] == pytest.approx(360.0)  # 180 mA x 2000 ms
    assert scan.hu.min() >= -1024  # -1500 padding is outside the FOV
    assert 0.3 < scan.fov.mean() < 0.9


def test_shared_single_slices_and_nifti_orientations():
    for name in ("CT1_UNC.dcm", "CT2_UNC.dcm", "lungmask_lidc_0.dcm"):
        scan = load_scan(shared_path("slices", name))
        assert scan.shape[0] == 1 and scan.shape[1:] == (512, 512)
        assert any("single 2-D slice" in w for w in scan.warnings)
        assert scan.hu[scan.fov].min() >= -1200
    lps = load_scan(shared_path("chest_ct_cropped", "ct_cropped.nii.gz"))
    ras = load_scan(shared_path("abdomen_ct_totalseg", "example_ct.nii.gz"))
    for s in (lps, ras):
        assert np.allclose(s.direction, np.eye(3))
        # anterior (row 0) of the body: the spine (bone) is in the posterior half of the image
        bone_rows = np.nonzero((s.hu > 300).any(axis=(0, 2)))[0]
        assert np.median(np.nonzero(s.hu > 300)[1]) > s.shape[1] * 0.4, bone_rows[:3]
