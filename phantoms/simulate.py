"""Simulated head and chest CT with ground truth (the project's ground-truth engine).

``simulate(region, seed=..., mas=..., kernel=..., shift_x=..., ...)`` returns a :class:`Phantom`:
the noisy scan (a :class:`qc.io.Scan` with realistic DICOM-keyword metadata), the noise-free twin,
the label volume and ``truth`` (every parameter and every true value an IQM can be checked against).

Two acquisition modes:

* ``projection`` (:mod:`phantoms.projection`): every slice is forward projected, Poisson noise is drawn
  with photons proportional to mAs x slice thickness, and the slice is reconstructed by FBP with the
  kernel's filter. Physics-based, about 1 s per 256^2 slice.
* ``image`` (fast, for bulk data): the ideal image is blurred by the kernel's PSF and Gaussian noise with
  the same NPS shape as the FBP (NPS(u) ~ u W(u)^2, u = f/f_Nyquist, W = the FBP apodisation window) is
  added; its SD follows the quantum-noise law sigma = sigma_ref sqrt(100/mAs) sqrt(5/slice_mm)
  exp(mu_w (WED - 200 mm)/2), with sigma_ref calibrated against the projection mode (the benchmark and
  the tests compare the two). Artifacts always come from the projection model.

Values are rounded to integers and clipped to [-1024, 3071] HU like a 12-bit scanner output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phantoms import anatomy
from phantoms.tissues import LABELS, NAME_TO_LABEL, hu_lookup

KERNELS = {
    # name: (PSF Gaussian sigma mm, FBP apodisation window, DICOM kernel name)
    "smooth": (0.6, "hann", "STANDARD"),
    "sharp": (0.3, "ramp", "LUNG"),
}
REGION_DEFAULTS = {
    # fov mm, slice mm, mAs, CTDIvol per mAs (mGy), window (C, W)
    "head": dict(fov=250.0, slice_mm=2.5, mas=400.0, ctdi_per_mas=0.15, window=(40.0, 80.0)),
    "chest": dict(fov=500.0, slice_mm=5.0, mas=100.0, ctdi_per_mas=0.08, window=(-600.0, 1500.0)),
}
#: Image-domain noise SD, calibrated against the projection mode (seed 2, 256 matrix; /tmp-free script in
#: benchmarks/bench_simulate.py prints both): SD (HU) of the smooth kernel at 100 mAs, 5 mm slices,
#: WED 200 mm and 1 mm pixels; sharp/smooth SD ratio (projection: 2.66 head, 2.69 chest).
IMAGE_SIGMA_REF = {"head": 9.66, "chest": 11.0}
IMAGE_SHARP_RATIO = 2.67


@dataclass
class Phantom:
    scan: object                 # qc.io.Scan (noisy)
    noise_free: np.ndarray       # HU [z, y, x], noise-free twin (same blur/kernel and artifacts)
    labels: np.ndarray           # uint8 [z, y, x], ids in phantoms.tissues.LABELS
    truth: dict = field(default_factory=dict)
    artifact_mask: np.ndarray | None = None  # uint8 bit flags (ARTIFACT_BITS) where an artifact is visible


def water_equivalent_diameter(hu: np.ndarray, body: np.ndarray, pixel_area_mm2: float) -> np.ndarray:
    """Per-slice water-equivalent diameter (AAPM TG-220): D_w = 2 sqrt((mean(HU)/1000 + 1) A / pi)."""
    out = np.zeros(hu.shape[0])
    for k in range(hu.shape[0]):
        m = body[k]
        if m.any():
            out[k] = 2.0 * np.sqrt(max(hu[k][m].mean() / 1000.0 + 1.0, 0.0) * m.sum() * pixel_area_mm2 / np.pi)
    return out


def shaped_noise(shape, window: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with the FBP noise power spectrum NPS(u) ~ u W(u)^2 (u = |f| / f_Nyquist <= 1;
    W = 0.5 (1 + cos(pi u)) for the Hann-apodised smooth kernel, 1 for the plain-ramp sharp kernel), each
    slice normalised to unit SD."""
    n_y, n_x = shape[1], shape[2]
    fy = np.fft.fftfreq(n_y) * 2.0
    fx = np.fft.rfftfreq(n_x) * 2.0
    u = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    w = 0.5 * (1.0 + np.cos(np.pi * np.clip(u, 0, 1))) if window == "hann" else np.ones_like(u)
    h = np.sqrt(u * w**2) * (u <= 1.0)
    white = rng.standard_normal(shape)
    out = np.fft.irfft2(np.fft.rfft2(white, axes=(1, 2)) * h, s=(n_y, n_x), axes=(1, 2))
    out /= out.std(axis=(1, 2), keepdims=True)
    return out


def image_noise_sd(region: str, kernel: str, mas: float, slice_mm: float, wed_mm: float, pixel_mm: float) -> float:
    """Image-domain noise SD (HU): sigma_ref sqrt(100/mAs) sqrt(5/slice) pixel^-1.5 exp(mu_w (WED - 200)/2)
    [x sharp ratio]; the pixel^-1.5 law is the FBP noise-variance scaling 1/(pixel^3 slice) (Brooks & Di Chiro 1976)."""
    from phantoms.projection import MU_WATER

    k = IMAGE_SHARP_RATIO if kernel == "sharp" else 1.0
    return float(IMAGE_SIGMA_REF[region] * k * np.sqrt(100.0 / mas) * np.sqrt(5.0 / slice_mm) * pixel_mm**-1.5
                 * np.exp(MU_WATER * (wed_mm - 200.0) / 2.0))


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


def _metal_centre(region: str, shape, center, rot) -> np.ndarray:
    """Scanner-frame position of the simulated metal: head - dental filling level in the upper jaw (front of
    the face, 10 mm below the skull base); chest - a clip/pacemaker lead in the anterior left chest wall."""
    if region == "head":
        c = np.array([8.0, -0.62 * shape.skin_axes[1], shape.skull_base_z - 10.0])
    else:
        c = np.array([0.35 * shape.half_width, -0.55 * shape.half_depth, shape.carina_z - 40.0])
    return center + rot @ c


def parse_artifacts(specs) -> dict[str, float]:
    """['metal:0.8', 'ring'] -> {'metal': 0.8, 'ring': 1.0}; unknown names raise ValueError."""
    from phantoms.projection import ARTIFACTS

    out: dict[str, float] = {}
    for spec in specs or []:
        name, _, sev = str(spec).partition(":")
        name = name.strip()
        if name not in ARTIFACTS:
            raise ValueError(f"unknown artifact {name!r} (choose from {', '.join(ARTIFACTS)})")
        value = float(sev) if sev else 1.0
        if not 0.0 < value <= 1.0:
            raise ValueError(f"artifact severity must be in (0, 1], got {value}")
        out[name] = value
    return out


ARTIFACT_BITS = {"metal": 1, "beam_hardening": 2, "ring": 4, "motion": 8, "truncation": 16}
ARTIFACT_THRESHOLD_HU = 5.0


def probe_truth(region: str, seed: int, **pose) -> dict:
    """The truth (landmark z positions, patient size, ...) of a seed's anatomy in a pose (shift_x, shift_y, yaw,
    pitch, roll, arms_up) without simulating the scan: one noise-free 16-pixel slice. Used to place a scan range
    relative to the true anatomy before simulating the scan itself."""
    return simulate(region, seed, matrix=16, z_start=0.0, z_end=1.0, noise=False, **pose).truth


def simulate(region: str = "head", seed: int = 0, *, mas: float | None = None, dose_fraction: float = 1.0,
             kernel: str = "smooth", shift_x: float = 0.0, shift_y: float = 0.0, yaw: float = 0.0, roll: float = 0.0,
             pitch: float = 0.0, z_start: float | None = None, z_end: float | None = None, matrix: int = 256,
             slice_mm: float | None = None, kvp: float = 120.0, window: tuple[float, float] | None = None,
             arms_up: bool | None = None, noise: bool = True, mode: str = "image",
             artifacts: dict[str, float] | None = None, table: bool = False) -> Phantom:
    """Simulate one scan. Positions in mm (scanner frame: x left, y posterior, z superior, isocentre at
    x = y = 0); the head centre / carina sits at z = 0. Defaults cover the region fully with a margin.

    mode: 'image' (NPS-shaped noise added to the blurred ideal image; artifacts still come from the
    projection model as noise-free difference images) or 'projection' (every slice forward projected,
    Poisson noise, FBP). dose_fraction scales the effective mAs (Noise2Quality-style dose levels).
    artifacts: {name: severity 0-1}, names in :data:`phantoms.projection.ARTIFACTS`.
    table: the patient table and mattress under the patient (:func:`phantoms.anatomy.patient_table`, drawn from its
    own random stream; label 0, outside the body). Off by default: the IQM ground truth was calibrated without it.
    """
    from scipy import ndimage as ndi

    from phantoms import projection
    from qc.io import Scan

    if region not in REGION_DEFAULTS:
        raise ValueError(f"region must be head or chest, not {region!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}")
    if mode not in ("image", "projection"):
        raise ValueError("mode must be 'image' or 'projection'")
    artifacts = dict(artifacts or {})
    for name in artifacts:
        parse_artifacts([f"{name}:{artifacts[name]}"])
    d = REGION_DEFAULTS[region]
    rng = np.random.default_rng(seed)
    nominal_mas = float(mas if mas is not None else d["mas"])
    if nominal_mas <= 0 or not 0 < dose_fraction <= 1:
        raise ValueError("mAs must be positive and dose_fraction in (0, 1]")
    eff_mas = nominal_mas * dose_fraction
    slice_mm = float(slice_mm if slice_mm is not None else d["slice_mm"])
    rot = anatomy.rotation_matrix(yaw, pitch, roll)
    center = np.array([shift_x, shift_y, 0.0])
    truth: dict = {"region": region, "seed": seed, "mode": mode}
    if region == "head":
        shape = anatomy.HeadShape.random(rng)
        vertex_z = center[2] + anatomy.ellipsoid_z_extent(shape.skin_axes, rot)
        fm_anat = np.array([0.0, 0.3 * shape.inner_axes[1], shape.skull_base_z])
        skull_base_z = float((center + rot @ fm_anat)[2])
        lens_z = [float((center + rot @ c)[2]) for c in shape.lens_centres]
        eam_z = float((center + rot @ np.array([shape.skin_axes[0], 0.05 * shape.skin_axes[1], shape.skull_base_z + 6]))[2])
        lo_default, hi_default = skull_base_z - 25.0, vertex_z + 8.0
        truth.update(head_scale=shape.scale, skull_thickness_mm=shape.skull_mm, vertex_z_mm=vertex_z,
                     skull_base_z_mm=skull_base_z, foramen_magnum_z_mm=skull_base_z, lens_z_mm=lens_z,
                     eam_z_mm=eam_z)
        fov = d["fov"]
    else:
        if pitch or roll:
            raise ValueError("chest phantom supports yaw only (no pitch/roll)")
        shape = anatomy.ChestShape.random(rng, arms_up=arms_up)
        # own stream: the gas pockets leave every other draw of the seed (pose, vessels, noise) as it was
        shape.gas = anatomy.abdominal_gas(np.random.default_rng([seed, 4099]), shape)
        apex_z, base_z = center[2] + shape.apex_z, center[2] + shape.base_z
        lo_default, hi_default = base_z - 20.0, apex_z + 20.0
        truth.update(half_width_mm=shape.half_width, half_depth_mm=shape.half_depth, arms_up=shape.arms_up,
                     lung_apex_z_mm=apex_z, lung_base_z_mm=base_z, carina_z_mm=center[2] + shape.carina_z)
        fov = d["fov"]
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
    metal_mask = None
    if "metal" in artifacts:
        mc = _metal_centre(region, shape, center, rot)
        radius = 2.0 + 3.0 * artifacts["metal"]
        zz = grid.z[:, None, None]
        yy = grid.xy[None, :, None]
        xx = grid.xy[None, None, :]
        metal_mask = (xx - mc[0]) ** 2 + (yy - mc[1]) ** 2 + (zz - mc[2]) ** 2 <= radius**2
        labels[metal_mask] = NAME_TO_LABEL["metal"]
        truth.update(metal_centre_mm=[float(v) for v in mc], metal_radius_mm=radius)

    psf_mm, window_fn, kernel_name = KERNELS[kernel]
    ideal = hu_lookup()[labels]
    body = _body_from_labels(labels)
    if table:
        tab = anatomy.patient_table(grid, body, np.random.default_rng([seed, 6151]))
        has = ~np.isnan(tab)
        ideal[has] = tab[has]
        truth["table"] = True
    wed = water_equivalent_diameter(ideal, body, grid.pixel_mm**2)
    wed_mean = float(wed[wed > 0].mean()) if (wed > 0).any() else 0.0
    noise_rng = np.random.default_rng([seed, 7919])  # separate stream: same noise draws with/without artifacts
    sino_shape = projection.sinogram_shape(grid.n)
    art_delta = np.zeros(ideal.shape, dtype=np.float32)
    noisy_delta = np.zeros(ideal.shape, dtype=np.float32)  # projection mode: noisy with - noisy without
    if mode == "image":
        clean = ndi.gaussian_filter(ideal, sigma=(0, psf_mm / grid.pixel_mm, psf_mm / grid.pixel_mm))
        sigma = image_noise_sd(region, kernel, eff_mas, slice_mm, wed_mean, grid.pixel_mm)
        if artifacts:
            zero = np.zeros(sino_shape)
            for k in range(n_slices):
                mm = None if metal_mask is None else metal_mask[k]
                if not _artifact_on_slice(artifacts, mm, ideal[k]):
                    continue
                _, with_art = projection.acquire_slice(ideal[k], grid.pixel_mm, eff_mas, kernel, zero, artifacts, metal_mask=mm,
                                                       slice_mm=slice_mm)
                _, without = projection.acquire_slice(ideal[k], grid.pixel_mm, eff_mas, kernel, zero, {}, metal_mask=mm,
                                                    slice_mm=slice_mm)
                art_delta[k] = with_art - without
        clean = clean + art_delta
        noisy = clean + (shaped_noise(clean.shape, window_fn, noise_rng) * sigma if noise else 0.0)
    else:
        noisy = np.empty(ideal.shape, dtype=np.float32)
        clean = np.empty(ideal.shape, dtype=np.float32)
        for k in range(n_slices):
            z = noise_rng.standard_normal(sino_shape) if noise else np.zeros(sino_shape)
            mm = None if metal_mask is None else metal_mask[k]
            noisy[k], clean[k] = projection.acquire_slice(ideal[k], grid.pixel_mm, eff_mas, kernel, z, artifacts,
                                                                metal_mask=mm, slice_mm=slice_mm)
            if artifacts and _artifact_on_slice(artifacts, mm, ideal[k]):
                # same noise draws without the artifact: the noisy difference also shows photon-starvation
                # streaks, which the noise-free difference cannot
                noisy_without, without = projection.acquire_slice(ideal[k], grid.pixel_mm, eff_mas, kernel, z, {},
                                                                  metal_mask=mm, slice_mm=slice_mm)
                art_delta[k] = clean[k] - without
                noisy_delta[k] = noisy[k] - noisy_without
        yy, xx = np.mgrid[: grid.n, : grid.n]
        outside = np.hypot(yy - (grid.n - 1) / 2, xx - (grid.n - 1) / 2) > grid.n / 2 - 1
        noisy[:, outside] = -1024.0
        clean[:, outside] = -1024.0
    noise_field = noisy - clean
    noisy = np.clip(np.rint(noisy), -1024, 3071).astype(np.float32)
    clean_q = np.clip(clean, -1024, 3071).astype(np.float32)

    # artifact truth mask (bit flags per artifact): where the artifact changes the image by more than 5 HU
    # (Gaussian-smoothed absolute difference, sigma 1 px): noise-free difference, and in projection mode also
    # the same-noise-draw difference (photon starvation)
    art_mask = None
    if artifacts:
        visible = ndi.gaussian_filter(np.abs(art_delta), sigma=(0, 1, 1)) > ARTIFACT_THRESHOLD_HU
        visible |= ndi.gaussian_filter(np.abs(noisy_delta), sigma=(0, 1, 1)) > ARTIFACT_THRESHOLD_HU
        if metal_mask is not None:
            visible |= metal_mask
        art_mask = np.zeros(labels.shape, dtype=np.uint8)
        for name in artifacts:
            art_mask[visible] |= ARTIFACT_BITS[name]
    tissue_sd = _noise_by_tissue(noise_field, labels)
    soft = np.isin(labels, [k for k, (_n, hu) in LABELS.items() if 0 <= hu <= 100]) & (art_delta == 0)
    soft = ndi.binary_erosion(soft, structure=np.ones((1, 5, 5), bool))
    noise_sd = float(noise_field[soft].std()) if soft.sum() > 100 and noise else 0.0

    cx, cy = _centroid_offset(body, grid)
    dz = slice_mm
    z_bottom, z_top = grid.z[0] - dz / 2, grid.z[-1] + dz / 2
    lens_present = bool((labels == NAME_TO_LABEL["lens"]).any())
    truth.update(
        shift_x_mm=shift_x, shift_y_mm=shift_y, yaw_deg=yaw, pitch_deg=pitch, roll_deg=roll,
        mas=eff_mas, nominal_mas=nominal_mas, dose_fraction=dose_fraction, kvp=kvp, kernel=kernel,
        slice_mm=slice_mm, matrix=int(matrix), pixel_mm=grid.pixel_mm, fov_mm=fov,
        z_start_mm=float(grid.z[0]), z_end_mm=float(grid.z[-1]), scan_bottom_mm=float(z_bottom), scan_top_mm=float(z_top),
        noise_sd_hu=noise_sd, noise_sd_by_tissue_hu=tissue_sd, wed_mm=wed_mean,
        centering_offset_lateral_mm=cx, centering_offset_vertical_mm=cy,
        ctdivol_mgy=d["ctdi_per_mas"] * eff_mas,
        artifacts={name: artifacts.get(name, 0.0) for name in ARTIFACT_BITS},
        artifact_present={name: name in artifacts for name in ARTIFACT_BITS},
    )
    if region == "head":
        gm = labels == NAME_TO_LABEL["grey_matter"]
        wm = labels == NAME_TO_LABEL["white_matter"]
        if gm.any() and wm.any() and tissue_sd.get("white_matter"):
            truth["cnr_gm_wm"] = float((clean[gm].mean() - clean[wm].mean()) / tissue_sd["white_matter"])
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
        "ProtocolName": f"PHANTOM {region.upper()}", "KVP": kvp, "XRayTubeCurrent": eff_mas, "ExposureTime": 1000.0,
        "Exposure": eff_mas, "ExposureMAs": eff_mas, "CTDIvol": round(d["ctdi_per_mas"] * eff_mas, 3),
        "ConvolutionKernel": kernel_name, "WindowCenter": float(win[0]), "WindowWidth": float(win[1]),
        "SliceThickness": slice_mm, "PatientPosition": "HFS", "FOVCenterLPS": [0.0, 0.0],
    }
    x0 = float(grid.xy[0])
    fov_mask = None
    if mode == "projection":  # only the reconstruction circle holds data
        fov_mask = np.broadcast_to(~outside, noisy.shape).copy()
    scan = Scan(hu=noisy, spacing=(slice_mm, grid.pixel_mm, grid.pixel_mm), origin=(x0, x0, float(grid.z[0])),
                metadata=meta, fov=fov_mask, source=f"phantom:{region}:seed{seed}")
    return Phantom(scan=scan, noise_free=clean_q, labels=labels, truth=_jsonable(truth), artifact_mask=art_mask)


def _artifact_on_slice(artifacts: dict, metal_slice, ideal_slice) -> bool:
    """Whether the slice needs the projection model for its artifacts (metal only where the object is;
    beam hardening only where dense bone is)."""
    for name in artifacts:
        if name == "metal" and metal_slice is not None and metal_slice.any():
            return True
        if name == "beam_hardening" and (ideal_slice > 300).sum() > 50:
            return True
        if name in ("ring", "motion", "truncation"):
            return True
    return False


def _noise_by_tissue(noise_field: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Noise SD (HU) of the noisy - noise-free difference inside each tissue, eroded 2 px in-plane."""
    from scipy import ndimage as ndi

    out = {}
    for k, (name, _hu) in LABELS.items():
        if k == 0:
            continue
        m = ndi.binary_erosion(labels == k, structure=np.ones((1, 5, 5), bool))
        if m.sum() >= 300:
            out[name] = float(noise_field[m].std())
    return out


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


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = ";".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in v)
        else:
            out[key] = v
    return out


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
    (out / "truth.json").write_text(json.dumps({**ph.truth, "label_table": label_table(),
                                                "artifact_bits": ARTIFACT_BITS}, indent=1))
    paths = {"scan": out / "scan.nii.gz", "labels": out / "labels.nii.gz", "truth": out / "truth.json"}
    if ph.artifact_mask is not None:
        am = sitk.GetImageFromArray(ph.artifact_mask)
        am.CopyInformation(img)
        sitk.WriteImage(am, str(out / "artifact_mask.nii.gz"))
        paths["artifact_mask"] = out / "artifact_mask.nii.gz"
    if dicom:
        from phantoms.dicom import write_dicom_series

        paths["dicom"] = write_dicom_series(ph.scan, out / "dicom", seed=int(ph.truth.get("seed", 0)))
    return paths
