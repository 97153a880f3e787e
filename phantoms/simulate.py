"""Simulated head and chest CT with ground truth (the project's ground-truth engine).

``simulate(region, seed=..., mas=..., kernel=..., shift_x=..., ...)`` returns a :class:`Phantom`:
the noisy scan (a :class:`qc.io.Scan` with realistic DICOM-keyword metadata), the noise-free twin,
the label volume and ``truth`` (every parameter and every true value an IQM can be checked against).

Acquisition model (image-domain mode): the noise-free image is blurred by the kernel's point spread
function and Gaussian noise with the kernel's noise power spectrum shape, NPS(f) ~ f exp(-(f/fc)^2)
(ramp filter x apodisation), is added. Its standard deviation follows the quantum-noise law
sigma = sigma_ref * sqrt(mAs_ref / mAs) * exp(mu_w (WED - WED_ref) / 2) (noise variance ~ 1/photons,
photons ~ mAs * exp(-mu_w WED); mu_w = 0.019 /mm for water at 120 kVp effective energy). Values are
rounded to integers and clipped to [-1024, 3071] HU like a 12-bit scanner output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phantoms import anatomy
from phantoms.tissues import LABELS, NAME_TO_LABEL, hu_lookup

MU_WATER_PER_MM = 0.019
KERNELS = {
    # name: (PSF Gaussian sigma mm, NPS cut-off fc in 1/mm, noise factor vs smooth, DICOM kernel name)
    "smooth": (0.6, 0.35, 1.0, "STANDARD"),
    "sharp": (0.3, 0.95, 2.4, "LUNG"),
}
REGION_DEFAULTS = {
    # fov mm, slice mm, mAs, sigma_ref HU at mAs_ref (smooth), WED_ref mm, CTDIvol per mAs (mGy), window (C, W)
    "head": dict(fov=250.0, slice_mm=2.5, mas=250.0, sigma_ref=3.5, wed_ref=160.0, ctdi_per_mas=0.2, window=(40.0, 80.0)),
    "chest": dict(fov=450.0, slice_mm=5.0, mas=100.0, sigma_ref=12.0, wed_ref=280.0, ctdi_per_mas=0.08, window=(-600.0, 1500.0)),
}


@dataclass
class Phantom:
    scan: object                 # qc.io.Scan (noisy)
    noise_free: np.ndarray       # HU [z, y, x], blurred but noise-free twin
    labels: np.ndarray           # uint8 [z, y, x], ids in phantoms.tissues.LABELS
    truth: dict = field(default_factory=dict)


def water_equivalent_diameter(hu: np.ndarray, body: np.ndarray, pixel_area_mm2: float) -> np.ndarray:
    """Per-slice water-equivalent diameter (AAPM TG-220): D_w = 2 sqrt((mean(HU)/1000 + 1) A / pi)."""
    out = np.zeros(hu.shape[0])
    for k in range(hu.shape[0]):
        m = body[k]
        if m.any():
            out[k] = 2.0 * np.sqrt(max(hu[k][m].mean() / 1000.0 + 1.0, 0.0) * m.sum() * pixel_area_mm2 / np.pi)
    return out


def shaped_noise(shape, pixel_mm: float, fc: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with NPS(f) ~ f exp(-(f/fc)^2), each slice normalised to unit SD."""
    n_y, n_x = shape[1], shape[2]
    fy = np.fft.fftfreq(n_y, d=pixel_mm)
    fx = np.fft.rfftfreq(n_x, d=pixel_mm)
    f = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    h = np.sqrt(f * np.exp(-((f / fc) ** 2)))
    white = rng.standard_normal(shape)
    out = np.fft.irfft2(np.fft.rfft2(white, axes=(1, 2)) * h, s=(n_y, n_x), axes=(1, 2))
    out /= out.std(axis=(1, 2), keepdims=True)
    return out


def _body_from_labels(labels: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    body = labels > 0
    out = np.empty_like(body)
    for k in range(body.shape[0]):
        out[k] = ndi.binary_fill_holes(body[k])
    return out


def _centroid_offset(body: np.ndarray, grid: anatomy.Grid) -> tuple[float, float]:
    area = body.reshape(body.shape[0], -1).sum(axis=1)
    sel = area >= 0.2 * area.max()
    _zz, yy, xx = np.nonzero(body[sel])
    return float(grid.xy[0] + xx.mean() * grid.pixel_mm), float(grid.xy[0] + yy.mean() * grid.pixel_mm)


def simulate(region: str = "head", seed: int = 0, *, mas: float | None = None, kernel: str = "smooth",
             shift_x: float = 0.0, shift_y: float = 0.0, yaw: float = 0.0, roll: float = 0.0, pitch: float = 0.0,
             z_start: float | None = None, z_end: float | None = None, matrix: int = 256,
             slice_mm: float | None = None, kvp: float = 120.0, window: tuple[float, float] | None = None,
             arms_up: bool | None = None, noise: bool = True) -> Phantom:
    """Simulate one scan. Positions in mm (scanner frame: x left, y posterior, z superior, isocentre at
    x = y = 0); the head centre / carina sits at z = 0. Defaults cover the region fully with a margin."""
    from qc.io import Scan

    if region not in REGION_DEFAULTS:
        raise ValueError(f"region must be head or chest, not {region!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}")
    d = REGION_DEFAULTS[region]
    rng = np.random.default_rng(seed)
    mas = float(mas if mas is not None else d["mas"])
    if mas <= 0:
        raise ValueError("mAs must be positive")
    slice_mm = float(slice_mm if slice_mm is not None else d["slice_mm"])
    rot = anatomy.rotation_matrix(yaw, pitch, roll)
    center = np.array([shift_x, shift_y, 0.0])
    truth: dict = {"region": region, "seed": seed}
    if region == "head":
        shape = anatomy.HeadShape.random(rng)
        vertex_z = center[2] + anatomy.ellipsoid_z_extent(shape.skin_axes, rot)
        fm_anat = np.array([0.0, 0.3 * shape.inner_axes[1], shape.skull_base_z])
        skull_base_z = float((center + rot @ fm_anat)[2])
        lens_z = [float((center + rot @ c)[2]) for c in shape.lens_centres]
        lo_default, hi_default = skull_base_z - 25.0, vertex_z + 8.0
        truth.update(head_scale=shape.scale, skull_thickness_mm=shape.skull_mm, vertex_z_mm=vertex_z,
                     skull_base_z_mm=skull_base_z, lens_z_mm=lens_z)
        fov = d["fov"]
    else:
        if pitch or roll:
            raise ValueError("chest phantom supports yaw only (no pitch/roll)")
        shape = anatomy.ChestShape.random(rng, arms_up=arms_up)
        apex_z, base_z = center[2] + shape.apex_z, center[2] + shape.base_z
        lo_default, hi_default = base_z - 20.0, apex_z + 20.0
        truth.update(half_width_mm=shape.half_width, half_depth_mm=shape.half_depth, arms_up=shape.arms_up,
                     lung_apex_z_mm=apex_z, lung_base_z_mm=base_z, carina_z_mm=center[2] + shape.carina_z)
        fov = d["fov"] if shape.arms_up else 500.0
    z0 = lo_default if z_start is None else float(z_start)
    z1 = hi_default if z_end is None else float(z_end)
    if z1 <= z0:
        raise ValueError("z_end must be above z_start")
    n_slices = int(np.floor((z1 - z0) / slice_mm)) + 1
    grid = anatomy.Grid(n=int(matrix), pixel_mm=fov / matrix, z=z0 + slice_mm * np.arange(n_slices))
    if region == "head":
        labels = anatomy.head_labels(grid, shape, center, rot)
    else:
        labels = anatomy.chest_labels(grid, shape, center, rot)
        anatomy.add_lung_vessels(labels, rng, n=int(8 * n_slices))

    from scipy import ndimage as ndi

    psf_mm, fc, k_factor, kernel_name = KERNELS[kernel]
    ideal = hu_lookup()[labels]
    clean = ndi.gaussian_filter(ideal, sigma=(0, psf_mm / grid.pixel_mm, psf_mm / grid.pixel_mm))
    body = _body_from_labels(labels)
    wed = water_equivalent_diameter(clean, body, grid.pixel_mm**2)
    wed_mean = float(wed[wed > 0].mean()) if (wed > 0).any() else 0.0
    sigma = d["sigma_ref"] * k_factor * np.sqrt(d["mas"] / mas) * np.exp(MU_WATER_PER_MM * (wed_mean - d["wed_ref"]) / 2)
    if noise:
        nz = shaped_noise(clean.shape, grid.pixel_mm, fc, rng) * sigma
        noisy = clean + nz
    else:
        noisy = clean.copy()
    noisy = np.clip(np.rint(noisy), -1024, 3071).astype(np.float32)
    clean_q = np.clip(clean, -1024, 3071).astype(np.float32)

    cx, cy = _centroid_offset(body, grid)
    dz = slice_mm
    z_bottom, z_top = grid.z[0] - dz / 2, grid.z[-1] + dz / 2
    lens_present = bool((labels == NAME_TO_LABEL["lens"]).any())
    truth.update(
        shift_x_mm=shift_x, shift_y_mm=shift_y, yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll,
        mas=mas, kvp=kvp, kernel=kernel, slice_mm=slice_mm, matrix=int(matrix), pixel_mm=grid.pixel_mm,
        z_start_mm=float(grid.z[0]), z_end_mm=float(grid.z[-1]), scan_bottom_mm=float(z_bottom), scan_top_mm=float(z_top),
        noise_sd_hu=float(sigma) if noise else 0.0, wed_mm=wed_mean,
        centering_offset_lateral_mm=cx, centering_offset_vertical_mm=cy,
        ctdivol_mgy=d["ctdi_per_mas"] * mas,
    )
    if region == "head":
        truth.update(vertex_margin_mm=z_top - truth["vertex_z_mm"], vertex_in_scan=truth["vertex_z_mm"] <= z_top,
                     skull_base_margin_mm=truth["skull_base_z_mm"] - z_bottom,
                     skull_base_in_scan=truth["skull_base_z_mm"] >= z_bottom, lens_in_scan=lens_present)
    else:
        truth.update(lung_apex_margin_mm=z_top - truth["lung_apex_z_mm"], apex_in_scan=truth["lung_apex_z_mm"] <= z_top,
                     lung_base_margin_mm=truth["lung_base_z_mm"] - z_bottom, base_in_scan=truth["lung_base_z_mm"] >= z_bottom)
    win = window if window is not None else d["window"]
    meta = {
        "Modality": "CT", "Manufacturer": "CTQC phantom", "ManufacturerModelName": "phantoms.simulate",
        "BodyPartExamined": region.upper(), "SeriesDescription": f"{region} phantom seed {seed}",
        "ProtocolName": f"PHANTOM {region.upper()}", "KVP": kvp, "XRayTubeCurrent": mas, "ExposureTime": 1000.0,
        "Exposure": mas, "ExposureMAs": mas, "CTDIvol": round(d["ctdi_per_mas"] * mas, 3),
        "ConvolutionKernel": kernel_name, "WindowCenter": float(win[0]), "WindowWidth": float(win[1]),
        "SliceThickness": slice_mm, "PatientPosition": "HFS", "FOVCenterLPS": [0.0, 0.0],
    }
    x0 = float(grid.xy[0])
    scan = Scan(hu=noisy, spacing=(slice_mm, grid.pixel_mm, grid.pixel_mm), origin=(x0, x0, float(grid.z[0])),
                metadata=meta, source=f"phantom:{region}:seed{seed}")
    return Phantom(scan=scan, noise_free=clean_q, labels=labels, truth=_jsonable(truth))


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        elif isinstance(v, np.bool_):
            v = bool(v)
        elif isinstance(v, (list, tuple)):
            v = [x.item() if hasattr(x, "item") else x for x in v]
        out[k] = v
    return out


def label_table() -> dict:
    return {str(k): {"name": n, "hu": hu} for k, (n, hu) in LABELS.items()}


def write_phantom(ph: Phantom, out_dir, dicom: bool = False) -> dict[str, Path]:
    """Write scan.nii.gz (+ scan.json sidecar with the DICOM keywords), labels.nii.gz, truth.json and, with
    ``dicom=True``, a DICOM series in ``dicom/``."""
    import SimpleITK as sitk

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img = ph.scan.to_sitk()
    img = sitk.Cast(img, sitk.sitkInt16)
    sitk.WriteImage(img, str(out / "scan.nii.gz"))
    lab = sitk.GetImageFromArray(ph.labels)
    lab.CopyInformation(img)
    sitk.WriteImage(lab, str(out / "labels.nii.gz"))
    (out / "scan.json").write_text(json.dumps({k: v for k, v in ph.scan.metadata.items() if k != "FOVCenterLPS"}, indent=1))
    (out / "truth.json").write_text(json.dumps({**ph.truth, "label_table": label_table()}, indent=1))
    paths = {"scan": out / "scan.nii.gz", "labels": out / "labels.nii.gz", "truth": out / "truth.json"}
    if dicom:
        from phantoms.dicom import write_dicom_series

        paths["dicom"] = write_dicom_series(ph.scan, out / "dicom", seed=int(ph.truth.get("seed", 0)))
    return paths
