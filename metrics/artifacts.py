"""Artifact IQMs: indices that are ~0 on a clean scan and grow with the artifact.

Speed: every index reads only a few slices (at most 8 sampled slices, or the slices that hold metal) beyond
one cheap pass over the masks, and the air-based ones work on a ~2.5 mm in-plane grid, so that each takes
< 0.1 s of CPU on a 512 x 512 x 300 volume (``tests/test_artifacts.py`` asserts < 0.15 s and prints them).

Validation (``tests/test_artifacts.py``): for each simulated artifact type (:mod:`phantoms.projection`:
metal, beam hardening, ring, motion, truncation) at moderate severity 0.5, scans with vs without the
artifact (different seeds, mAs, kernels and positioning) are told apart with ROC AUC >= 0.95.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from metrics.registry import register_iqm

METAL_HU = 2500.0
#: in-plane working grid of the air-based indices (block mean of f x f pixels, f = round(2.5 mm / pixel))
WORKING_MM = 2.5
#: air around the patient: 3x3-mean HU below this on the working grid (foam pads read -950..-900 HU)
AIR_BELOW_HU = -960.0
BARRETT_KEAT = ("Barrett JF, Keat N. Artifacts in CT: recognition and avoidance. RadioGraphics 2004;24:1679-1691")


# ------------------------------------------------------------------ helpers
def _slices_with(mask: np.ndarray, n: int | None = None) -> np.ndarray:
    """Indices of the slices where ``mask`` has any voxel, at most ``n`` of them evenly spaced."""
    zs = np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]
    if n is not None and zs.size > n:
        zs = zs[np.linspace(0, zs.size - 1, n).round().astype(int)]
    return zs


def _distinct_slices(m: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Group the slices of a boolean volume: [(representative slice, indices of the slices equal to it)].
    The field of view is nearly always the same on every slice; comparing the slices as uint64 words is
    ~50x cheaper than eroding the 3-D volume."""
    nz = m.shape[0]
    if m.strides[0] == 0:  # a broadcast view (the usual field of view): one slice, and no full-size copy of it
        return [(0, np.arange(nz))]
    flat = np.ascontiguousarray(m).reshape(nz, -1)
    key = flat.view(np.uint64) if flat.shape[1] % 8 == 0 else flat
    same = (key == key[0]).all(axis=1)
    groups = [(0, np.nonzero(same)[0])]
    groups += [(int(k), np.array([k])) for k in np.nonzero(~same)[0]]
    return groups


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """2-D block mean over f x f pixels (the image cropped to a multiple of f), as a sum of f^2 strided views."""
    a = a.astype(np.float32, copy=False)
    if f == 1:
        return a
    ny, nx = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    out = np.zeros((ny // f, nx // f), dtype=np.float32)
    for i in range(f):
        for j in range(f):
            out += a[i:ny:f, j:nx:f]
    return out / (f * f)


def _air_near_body(hu2d, body2d, fov2d, px_mm: float, shell_mm: tuple[float, float]):
    """On the ~2.5 mm working grid: (HU, air mask, body, pixel mm) for the air ``shell_mm`` outside the body,
    inside the field of view (2 working pixels in). Air = not within 2 working pixels (~5 mm) of anything
    whose 3x3-mean HU is >= -960: head holders, foam pads (-950..-900 HU), blankets, table and cables are
    left out with a margin, true air reads -1000 +- a few HU on this grid. HU block-averaged, masks
    subsampled."""
    f = max(1, int(round(WORKING_MM / px_mm)))
    h = _block_mean(hu2d, f)
    ny, nx = h.shape
    b = body2d[: ny * f : f, : nx * f : f]
    fv = ndi.binary_erosion(fov2d[: ny * f : f, : nx * f : f], iterations=2)
    px = px_mm * f
    dist = ndi.distance_transform_edt(~b) * px
    objects = ndi.binary_dilation(ndi.uniform_filter(h, size=3) >= AIR_BELOW_HU, iterations=2)
    return h, (dist >= shell_mm[0]) & (dist <= shell_mm[1]) & ~objects & fv, b, px


def _bilinear(img: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a 2-D image at (yy, xx) inside the image (hand-written: ~5x faster than
    scipy.ndimage.map_coordinates for the ~50 000 polar samples per slice)."""
    img = np.asarray(img, dtype=np.float32)  # int16 HU: differences such as b - a must not wrap around
    y0 = np.clip(np.floor(yy).astype(np.intp), 0, img.shape[0] - 2)
    x0 = np.clip(np.floor(xx).astype(np.intp), 0, img.shape[1] - 2)
    fy = (yy - y0).astype(np.float32)
    fx = (xx - x0).astype(np.float32)
    a, b = img[y0, x0], img[y0, x0 + 1]
    c, d = img[y0 + 1, x0], img[y0 + 1, x0 + 1]
    return (a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy


def _metal_slices(hu: np.ndarray, body_mask: np.ndarray) -> dict[int, int]:
    """{slice: number of metal voxels (> METAL_HU inside the body)} for the slices that hold metal. The
    per-slice maximum is read first, so that the full-size comparison runs only on the candidate slices."""
    nz = hu.shape[0]
    cand = np.nonzero(hu.reshape(nz, -1).max(axis=1) > METAL_HU)[0]
    out = {}
    for k in cand:
        c = int(np.count_nonzero((hu[k] > METAL_HU) & body_mask[k]))
        if c:
            out[int(k)] = c
    return out


# ------------------------------------------------------------------ truncation
@register_iqm(unit="%", direction="lower_is_better",
              formula="100 x #slices whose body mask touches the field-of-view boundary / #slices with body",
              reference="AAPM Report 220 (2014) sec. 3 (truncated patients); Kalender, Computed Tomography 3rd ed. "
              "(truncation artifacts)")
def truncation_pct(body_mask, fov):
    """Share of slices in which the patient extends to the edge of the reconstructed field (body cut off:
    truncation artifacts, wrong WED/SSDE).

    The field boundary is eroded once per distinct field-of-view slice (usually one: the reconstruction
    circle or the image border is the same on every slice), and only the boundary pixels are looked up in
    the body mask."""
    nz, ny, nx = body_mask.shape
    has = body_mask.reshape(nz, -1).any(axis=1)
    if not has.any():
        return None
    groups = _distinct_slices(fov)
    union = np.zeros((ny, nx), dtype=bool)
    for rep, _idx in groups:
        union |= fov[rep]
    # only the outer rim of the field counts (the reconstruction circle or the image border), not the inner
    # boundary of a resampled tilted slab: edge pixels at >= 95 % of the largest field radius
    yy, xx = np.mgrid[:ny, :nx]
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    r = np.hypot(yy - cy, xx - cx)
    rim = r >= 0.95 * min(float(r[union].max()) if union.any() else 0.0, max(cy, cx))
    touch = np.zeros(nz, dtype=bool)
    for rep, idx in groups:
        f = fov[rep]
        edge = f & ~ndi.binary_erosion(f, structure=np.ones((3, 3), bool), border_value=0) & rim
        ey, ex = np.nonzero(edge)
        if ey.size:
            touch[idx] = body_mask[idx[:, None], ey[None, :], ex[None, :]].any(axis=1)
    return float(100.0 * touch[has].mean())


@register_iqm(unit="HU", direction="lower_is_better",
              formula="max over <= 8 slices of [max_s m_s - median_s m_s], m_s = median HU of the air 5-60 mm outside "
              "the body (~2.5 mm grid; > 5 mm from anything >= -960 HU) in 10-degree sector s about the body "
              "centroid (sectors with >= 30 pixels, >= 6 sectors)",
              reference=BARRETT_KEAT + " (truncation: bright shading at the periphery); Hsieh J et al. A novel "
              "reconstruction algorithm to extend the CT scan field-of-view. Med Phys 2004;31:2385-2391")
def truncation_shading_hu(hu, spacing, body_mask, fov):
    """Truncation shading: how much brighter than the rest the air next to the body reads in its brightest
    direction, in HU.

    When the patient extends beyond the scan field of view, the missing projection data leave bright
    shading at the periphery that fans out from the cut into the surrounding air (extended-field-of-view
    reconstructions without truncation correction). Air is otherwise flat (-1000 HU) in every direction;
    the sector medians ignore noise and the comparison with the median sector ignores the scanner's air
    calibration. Shading brighter than -960 HU is left out with the pads (the index then saturates near
    40 HU). None when no air is visible around the body (patient filling the field: see truncation_pct,
    which covers the common case of a body cut by the edge of the reconstructed image)."""
    zs = _slices_with(body_mask, 8)
    if zs.size == 0:
        return None
    best = None
    for k in zs:
        h, air, b, _px = _air_near_body(hu[k], body_mask[k], fov[k], float(spacing[2]), (5.0, 60.0))
        if not b.any() or air.sum() < 200:
            continue
        cy, cx = ndi.center_of_mass(b)
        yy, xx = np.nonzero(air)
        sector = ((np.arctan2(yy - cy, xx - cx) + np.pi) / (2 * np.pi) * 36).astype(int) % 36
        v = h[yy, xx]
        order = np.argsort(sector, kind="stable")
        bounds = np.searchsorted(sector[order], np.arange(37))
        meds = [float(np.median(v[order[bounds[s]:bounds[s + 1]]]))
                for s in range(36) if bounds[s + 1] - bounds[s] >= 30]
        if len(meds) >= 6:
            lift = max(meds) - float(np.median(meds))
            best = lift if best is None else max(best, lift)
    return best


# ------------------------------------------------------------------ rings
@register_iqm(unit="HU", direction="lower_is_better",
              formula="max over radii r of |mean over angles a and <= 8 slices of (I(r, a) - median_7r(I)(r, a))|, "
              "I = slice in polar coordinates about the isocentre, mean over flat non-air pixels inside the body "
              "(max - min of the radial median over the window < 100 HU, |residual| < 150 HU), radii >= 8 px with >= "
              "25 % of the samples valid",
              reference="Sijbers J, Postnov A. Reduction of ring artefacts in high resolution micro-CT "
              "reconstructions. Phys Med Biol 2004;49:N247 (polar-transform ring detection)")
def ring_index_hu(hu, body_mask, isocenter_xy=None):
    """Ring artifact index: the strongest ring-shaped (centred on the isocentre, sharp in radius) residual, in HU.

    A ring (a miscalibrated detector channel) sits at the same radius on every slice and at every angle
    (on half of the circle for a 180-degree or half-scan reconstruction): the radial high-pass residual is
    averaged over angles and slices, where anatomy edges and noise average out. Edges (bone, skin, lung
    borders) are left out by the flatness test. Noise floor: 1-3 HU on the clean phantoms (2-25 HU noise,
    128 matrix, 2 slices), 2-7 HU on the shared real scans (1-55 slices). Rings of radius < 8 pixels (a
    circle of < 50 pixels) are not measured."""
    nz, ny, nx = hu.shape
    zs = _slices_with(body_mask, 8)
    if zs.size == 0:
        return None
    cx, cy = isocenter_xy if isocenter_xy is not None else ((nx - 1) / 2.0, (ny - 1) / 2.0)
    # radii up to the farthest body pixel (4-pixel subsample) or the image edge
    by, bx = np.nonzero(body_mask[zs, ::4, ::4].any(axis=0))
    r_body = float(np.hypot(4 * by - cy, 4 * bx - cx).max()) + 8 if by.size else 0.0
    rmax = int(np.floor(min(cx, cy, nx - 1 - cx, ny - 1 - cy, r_body)))
    if rmax < 8:
        return None
    n_ang = 180
    radius = np.arange(rmax, dtype=float)
    th = np.linspace(0.0, 2 * np.pi, n_ang, endpoint=False)
    yy = cy + np.outer(np.sin(th), radius)
    xx = cx + np.outer(np.cos(th), radius)
    total = np.zeros(rmax)
    count = np.zeros(rmax)
    iy, ix = np.rint(yy).astype(np.intp), np.rint(xx).astype(np.intp)
    for k in zs:
        polar = _bilinear(hu[k], yy, xx)
        inside = body_mask[k][iy, ix]
        background = ndi.median_filter(polar, size=(1, 7))
        res = polar - background
        spread = ndi.maximum_filter(background, size=(1, 7)) - ndi.minimum_filter(background, size=(1, 7))
        valid = inside & (spread < 100.0) & (np.abs(res) < 150.0) & (background > -950.0)
        total += (res * valid).sum(axis=0)
        count += valid.sum(axis=0)
    ok = count >= 0.25 * n_ang * zs.size
    ok[:8] = False  # a circle of radius < 8 px holds < 50 distinct pixels: too noisy to tell a ring
    if not ok.any():
        return 0.0
    return float(np.abs(total[ok] / count[ok]).max())


# ------------------------------------------------------------------ metal and streaks

#: radial bands (mm beyond the metal's radius) of the streak profiles: two disjoint bands, so that noise is
#: independent between them while a streak (a line through the metal) is in both
STREAK_BANDS_MM = ((5.0, 25.0), (25.0, 45.0))


def largest_metal_object(metal: np.ndarray) -> tuple[float, float, float]:
    """(row, column) centroid and equal-area radius (pixels) of the largest connected object of a 2-D metal mask
    (which must hold some metal): the centre the streak measures look from."""
    lab, _n = ndi.label(metal)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    j = int(np.argmax(sizes))
    cy, cx = ndi.center_of_mass(lab == j)
    return float(cy), float(cx), float(np.sqrt(sizes[j] / np.pi))


def metal_ray_profiles(hu2d, pixel_mm: float, keep_mask, bands=STREAK_BANDS_MM, n_angles: int = 360) -> dict | None:
    """Angular profiles of the high-pass residual along rays from the largest metal object of one slice (the
    per-slice part of :func:`streak_index_hu`, shared with the artifact detector's streak channel).

    residual = I - median_7mm(I); only flat pixels count (range of the median image over 3 x 3 < 100 HU), inside
    ``keep_mask``, 2 px away from the metal, eroded 2 px. profile_band(a) = mean residual over the band's radii
    (r_metal + lo .. r_metal + hi mm) along the ray at angle a (NaN where < 3 samples). Returns None when the
    slice holds no metal (> METAL_HU inside ``keep_mask``), else {"cy", "cx" (px), "r_metal_mm", "profiles" (one
    array per band, ``n_angles`` equally spaced angles from 0)}."""
    hu2d = np.asarray(hu2d)
    keep_mask = np.asarray(keep_mask, dtype=bool)
    metal = (hu2d > METAL_HU) & keep_mask
    if not metal.any():
        return None
    px = float(pixel_mm)
    size = max(3, int(round(7.0 / px)) | 1)
    th = np.linspace(0.0, 2 * np.pi, n_angles, endpoint=False)
    cy, cx, r_metal_px = largest_metal_object(metal)
    r_metal = r_metal_px * px
    r_far = max(hi for _lo, hi in bands)
    half = int(np.ceil((r_metal + r_far) / px)) + size
    y0, x0 = max(int(cy) - half, 0), max(int(cx) - half, 0)
    y1, x1 = min(int(cy) + half + 1, hu2d.shape[0]), min(int(cx) + half + 1, hu2d.shape[1])
    crop = hu2d[y0:y1, x0:x1].astype(np.float32)
    med = ndi.median_filter(crop, size=size)
    res = crop - med
    # flat regions inside the body (soft tissue, fat, uniform bone, lung): range of the median image over
    # 3 x 3 pixels < 100 HU; 2 px away from the metal, eroded 2 px
    flat = (ndi.maximum_filter(med, size=3) - ndi.minimum_filter(med, size=3)) < 100.0
    tissue = flat & keep_mask[y0:y1, x0:x1] & ~ndi.binary_dilation(metal[y0:y1, x0:x1], iterations=2)
    tissue = ndi.binary_erosion(tissue, iterations=2)
    profiles = []
    for lo, hi in bands:
        r = np.arange(r_metal + lo, r_metal + hi, px / 2)
        yy = cy - y0 + np.outer(np.sin(th), r) / px
        xx = cx - x0 + np.outer(np.cos(th), r) / px
        v = ndi.map_coordinates(res, [yy, xx], order=1, mode="constant", cval=0.0)
        m = ndi.map_coordinates(tissue.astype(np.float32), [yy, xx], order=0, mode="constant", cval=0.0) > 0.5
        n = m.sum(axis=1)
        profiles.append(np.where(n >= 3, (v * m).sum(axis=1) / np.maximum(n, 1), np.nan))
    return {"cy": cy, "cx": cx, "r_metal_mm": r_metal, "profiles": profiles}

@register_iqm(unit="HU", direction="lower_is_better",
              formula="MAI = sqrt(max(SD_art^2 - SD_ref^2, 0)); SD_art = SD of soft tissue (-100..200 HU) 5-40 mm from "
              "metal (> 2500 HU) in the metal slices, SD_ref = global noise index; 0 without metal",
              reference="Kidoh M et al., Br J Radiol 2014 (metal artifact index); Wellenberg RHH et al., Eur J Radiol 2018")
def metal_artifact_index_hu(hu, spacing, body_mask):
    """Excess noise around metal (streaks), in HU."""
    from metrics.noise import global_noise_index_hu

    slices = _metal_slices(hu, body_mask)
    if sum(slices.values()) < 3:
        return 0.0
    ref = global_noise_index_hu(hu, spacing, body_mask) or 0.0
    sd = []
    for k in sorted(slices):
        metal = (hu[k] > METAL_HU) & body_mask[k]
        d = ndi.distance_transform_edt(~metal, sampling=spacing[1:])
        ring = (d >= 5) & (d <= 40) & body_mask[k] & (hu[k] > -100) & (hu[k] < 200)
        if ring.sum() > 50:
            sd.append(float(hu[k][ring].std()))
    if not sd:
        return 0.0
    return float(np.sqrt(max(np.mean(sd) ** 2 - ref**2, 0.0)))


@register_iqm(unit="HU", direction="lower_is_better",
              formula="S = sqrt(max(cov_a(p_in(a), p_out(a)) pooled over <= 8 metal slices, 0)); p_band(a) = mean along "
              "the ray at angle a from the metal centroid, over radii r_m + 5..25 mm (in) or r_m + 25..45 mm (out), of "
              "the residual I - median_7mm(I) over flat regions of the body (3x3 range of the median image < 100 HU, "
              "eroded 2 px); 0 without metal",
              reference="Imai K, Ikeda M, Enchi Y, Niimi T. Analysis of streak artefacts on CT images using statistics "
              "of extremes. Br J Radiol 2007;80:911-918 (CT-number profiles across the streaks); Park HS, Choi JK, "
              "Seo JK. Characterization of metal artifacts in X-ray computed tomography. Comm Pure Appl Math "
              "2017;70:2191-2217 (streaks lie on lines through the metal)")
def streak_index_hu(hu, spacing, body_mask):
    """Metal streak index: the amplitude (HU) of the bright and dark streaks that radiate from metal.

    Metal streaks (beam hardening and photon starvation along the rays through the metal) are straight
    lines through the metal: in polar coordinates about the metal they are constant along the radius and
    vary with the angle. The angular profile of the high-pass residual is taken in two disjoint radial
    bands; streaks are in both, noise is independent between them, so the covariance of the two profiles
    is the streak power without a noise model. Anatomy edges are left out (only flat regions count). 0 when
    the scan holds no metal (> 2500 HU)."""
    slices = _metal_slices(hu, body_mask)
    if not slices:
        return 0.0
    ks = sorted(slices, key=slices.get, reverse=True)[:8]
    products = []
    for k in ks:
        rays = metal_ray_profiles(hu[k], float(spacing[2]), body_mask[k])
        if rays is None:
            continue
        a_in, a_out = rays["profiles"]
        ok = np.isfinite(a_in) & np.isfinite(a_out)
        if ok.sum() >= 8:
            a, b = a_in[ok], a_out[ok]
            products.append((a - a.mean()) * (b - b.mean()))
    if not products:
        return 0.0
    return float(np.sqrt(max(float(np.concatenate(products).mean()), 0.0)))


# ------------------------------------------------------------------ motion
@register_iqm(unit="HU", direction="lower_is_better",
              formula="sqrt(max(median over <= 8 slices of max over lag directions d in {x, y, x+y, x-y} of "
              "mean(v(p) v(p + 6 mm d)), 0)), v = HU - mean HU over the air 2-20 mm outside the body (~2.5 mm grid; "
              "> 5 mm from anything >= -960 HU)",
              reference="Mortamet B et al. Automatic quality assessment in structural brain magnetic resonance imaging. "
              "Magn Reson Med 2009;62:365-372 (QI1: artifactual signal in the background air); " + BARRETT_KEAT +
              " (motion: streaks and double contours)")
def motion_index_hu(hu, spacing, body_mask, fov):
    """Motion index: structured signal (ghost contours and streaks) in the air around the patient, in HU.

    A patient moving during the rotation leaves inconsistent projections: the body outline and the skull are
    doubled and streaks tangent to them run out into the air, where a still scan shows only noise. Noise is
    uncorrelated beyond a few pixels, the artifacts are not: the spatial autocovariance of the air at a 6 mm
    lag (along the direction where it is largest) is the artifact power without a noise model. Head holders,
    pads and blankets are left out (anything >= -960 HU, with a 5 mm margin). Also raised by truncation
    shading (see truncation_shading_hu) and by metal streaks that reach the air. A still patient who moved
    between two rotations (a step between slices) is not measured."""
    zs = _slices_with(body_mask, 8)
    if zs.size == 0:
        return None
    vals = []
    for k in zs:
        h, air, _b, px = _air_near_body(hu[k], body_mask[k], fov[k], float(spacing[2]), (2.0, 20.0))
        if air.sum() < 100:
            continue
        v = np.where(air, h - float(h[air].mean()), 0.0)
        lag = max(1, int(round(6.0 / px)))
        covs = []
        for a, b, ma, mb in _lag_pairs(v, air, lag):
            both = ma & mb
            if both.sum() >= 50:
                covs.append(float((a[both] * b[both]).mean()))
        if covs:
            vals.append(max(covs))
    if not vals:
        return 0.0
    return float(np.sqrt(max(float(np.median(vals)), 0.0)))


def _lag_pairs(v: np.ndarray, m: np.ndarray, lag: int):
    """(v, v shifted, m, m shifted) for lags along x, y and both diagonals (slicing, no wrap-around)."""
    L = lag
    yield v[:, L:], v[:, :-L], m[:, L:], m[:, :-L]
    yield v[L:, :], v[:-L, :], m[L:, :], m[:-L, :]
    yield v[L:, L:], v[:-L, :-L], m[L:, L:], m[:-L, :-L]
    yield v[L:, :-L], v[:-L, L:], m[L:, :-L], m[:-L, L:]


# ------------------------------------------------------------------ beam hardening
@register_iqm(unit="HU", direction="lower_is_better", regions=("head",),
              formula="median HU of posterior-fossa brain 4-10 mm from the inner table - median HU of posterior-fossa "
              "brain >= 15 mm from it; brain = 1.5 mm-smoothed 15-55 HU in the posterior half of the cranial cavity, "
              "posterior fossa = the lowest 40 mm of the cavity (<= 8 slices)",
              reference=BARRETT_KEAT + " (beam hardening: cupping and dark bands between the petrous bones); Joseph PM, "
              "Spital RD. A method for correcting bone induced artifacts in computed tomography scanners. J Comput "
              "Assist Tomogr 1978;2:100-108; Artifacts in computed tomography of the posterior fossa: a comparative "
              "phantom study. J Comput Assist Tomogr 1986;10:560-566 (CT-number deviation in the posterior fossa)")
def posterior_fossa_bh_index_hu(hu, spacing, intracranial_mask):
    """Posterior-fossa beam-hardening index: brain next to the skull minus deep brain, in the posterior fossa (HU).

    Bone beam hardening shows in two ways, both in this difference: the brain next to the inner table reads
    too dense (cupping of the bone-corrected image), and the deep posterior fossa between the petrous bones
    reads too low (the interpetrous dark band, "Hounsfield bar"). On a well-corrected scan the cerebellar
    cortex and the deep cerebellum differ by a few HU only (~2 HU on the phantom)."""
    nz = intracranial_mask.shape[0]
    area = intracranial_mask[:, ::4, ::4].reshape(nz, -1).sum(axis=1)
    if area.max() == 0:
        return None
    cavity = np.nonzero(area > 0.05 * area.max())[0]
    pf = cavity[(cavity - cavity[0]) * float(spacing[0]) <= 40.0]
    if pf.size > 8:
        pf = pf[np.linspace(0, pf.size - 1, 8).round().astype(int)]
    f = max(1, int(round(1.0 / float(spacing[2]))))  # ~1 mm working grid (block mean)
    px = float(spacing[2]) * f
    near, deep = [], []
    for k in pf:
        rows, cols = np.nonzero(intracranial_mask[k, ::f, ::f])
        if rows.size < 50:
            continue
        y0, y1 = max(rows.min() - 3, 0) * f, min(rows.max() + 4, hu.shape[1] // f) * f
        x0, x1 = max(cols.min() - 3, 0) * f, min(cols.max() + 4, hu.shape[2] // f) * f
        ic = intracranial_mask[k, y0:y1:f, x0:x1:f]
        depth = ndi.distance_transform_edt(ic, sampling=(float(spacing[1]) * f, px))
        smooth = ndi.gaussian_filter(_block_mean(hu[k, y0:y1, x0:x1], f), 1.5 / px)
        posterior = (np.arange(ic.shape[0]) > rows.mean() - y0 // f)[:, None]
        brain = ic & posterior & (smooth > 15) & (smooth < 55)
        near.append(smooth[brain & (depth >= 4) & (depth < 10)])
        deep.append(smooth[brain & (depth >= 15)])
    if not near:
        return None
    near, deep = np.concatenate(near), np.concatenate(deep)
    if near.size < 50 or deep.size < 50:
        return None
    return float(np.median(near) - np.median(deep))
