"""Radiation-protection IQMs (head): are the eye lenses inside the scanned z-range, and by how much?

The eye lens is among the most radiosensitive tissues (ICRP Publication 118, 2012: cataract threshold
0.5 Gy); routine brain CT keeps the orbits out of the primary beam where the indication allows, by the
range or by angling the scan plane along the supraorbitomeatal line (ACR-ASNR-SPR brain CT practice
parameter; Nikupaavo et al. 2015).

The eyes are found classically, from HU and geometry (:func:`detect_eyes`): each globe is a fluid-density
(vitreous, about 0-20 HU) near-sphere of about 24 mm diameter in fat, anterior to the cranial cavity,
with its partner mirrored about the mid-sagittal plane; the lens is a small denser (about 100 HU)
ellipsoid at the globe's anterior pole. Positions are in mm: x = column x dx, y = row x dy, z = the
physical slice position (``z_positions``, superior positive).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from metrics.registry import register_iqm

ICRP118 = ("ICRP Publication 118 (2012), tissue reactions: eye-lens threshold 0.5 Gy; Nikupaavo U, Kaasalainen T "
           "et al., Lens dose in routine head CT: comparison of different optimization methods, Eur Radiol 2015;25:2656")

GLOBE_RADIUS_MM = 12.0    # adult eye: axial length about 24 mm
LENS_RADIUS_MM = 4.5      # adult lens: equatorial diameter about 9 mm (its z half-extent in a near-axial head)
FLUID_HU = (-30.0, 30.0)  # vitreous ~10 HU (up to ~25 on real scans), 0.8 mm-smoothed; fat -100, soft tissue 40
LENS_HU = 60.0            # lens about 100 HU; soft tissue 40 HU, vitreous 10 HU
BONE_HU = 300.0
MIN_LENS_MM3 = 5.0        # smallest lens blob: noise specks above LENS_HU are single voxels (2.4 mm3 at 1 x 1 x 2.5 mm)
MIN_PREDICTED_MM = 2.0    # no lens tissue seen: lens counted in range when the globe places >= 2 mm of it inside
MIN_GLOBE_ML = 0.1        # smallest fluid component kept as a globe candidate (a cap cut by the scan edge)
MIN_EDGE_CAP_ML = 0.02    # ... when it touches the first or last slice (what is left of a cap near the orbit's bone)
MAX_GLOBE_ML = 10.0       # an adult globe holds ~7 mL
RIM_MAX_HU = 0.0          # median (smoothed) HU of a 3 mm rim around a globe: orbital fat, eyelid, air


@dataclass
class Eye:
    """One detected eye. ``globe_mm``: globe centre (x, y, z) from a fixed-radius sphere fit to the
    globe/fat interface (None when too little of the surface is in the scan); ``lens_mm``: centroid of the
    lens voxels (None when no lens tissue is in the scan); ``lens_z_range_mm``: (lowest, highest) slice
    position holding lens tissue; ``lens_cut``: lens tissue on the first or last slice (the scan edge cuts
    the lens); ``volume_ml``: volume of the fluid (vitreous) component."""

    globe_mm: np.ndarray | None
    lens_mm: np.ndarray | None
    lens_z_range_mm: tuple[float, float] | None
    lens_cut: bool
    volume_ml: float


def _fit_sphere_fixed_radius(pts: np.ndarray, radius: float, start: np.ndarray) -> np.ndarray:
    """Least-squares centre of a sphere of known radius through the points (Gauss-Newton on
    |p - c| - r; scipy.optimize.least_squares would do the same, at 10x the call overhead for 3 unknowns)."""
    c = np.asarray(start, dtype=float).copy()
    for _ in range(30):
        d = pts - c
        n = np.linalg.norm(d, axis=1)
        n[n < 1e-6] = 1e-6
        res = n - radius
        jac = -d / n[:, None]
        step, *_ = np.linalg.lstsq(jac, -res, rcond=None)
        c = c + step
        if np.linalg.norm(step) < 1e-3:
            break
    return c


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """In-plane mean of f x f pixel blocks (float32), as a sum of f^2 strided views (a reshape-mean over the
    non-contiguous axes is several times slower)."""
    if f == 1:
        return np.asarray(a, dtype=np.float32)
    nz, ny, nx = a.shape
    cy, cx = ny // f, nx // f
    out = np.zeros((nz, cy, cx), dtype=np.float32)
    for i in range(f):
        for j in range(f):
            out += a[:, i : cy * f : f, j : cx * f : f]
    out /= f * f
    return out


def _box_dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """In-plane dilation by a (2r+1)^2 square (separable maximum filter: much faster than iterated binary_dilation)."""
    return ndi.maximum_filter(mask, size=(1, 2 * r + 1, 2 * r + 1))


def _to_mm(index_small, f: int, pixel_mm: float):
    """Working-grid index (block mean of f pixels) -> mm from the centre of full-resolution pixel 0."""
    return (np.asarray(index_small) * f + 0.5 * (f - 1)) * float(pixel_mm)


def detect_eyes(hu, spacing, intracranial_mask, z_positions) -> list[Eye] | None:
    """Eye globes and lenses from HU and geometry; returns a list of 0-2 :class:`Eye` (left/right order not
    guaranteed), or None when the scan holds less than 3 mL of cranial cavity (not a head: nothing to relate
    the eyes to).

    1. Working grid: in-plane blocks of about 1 mm (block mean), cropped to the anterior half of the cranial
       cavity and 40 mm in front of it, its width +- 10 mm, from the first slice to its widest slice + 30 mm.
    2. Fluid: 0.8 mm-smoothed HU in FLUID_HU, more than 2 mm from bone (> 300 HU) and 2 blocks from the
       cavity, opened by a 2 mm square (drops the thin partial-volume band of fat/soft-tissue borders).
    3. Globe candidates: 3-D components of MIN_GLOBE_ML-MAX_GLOBE_ML (from MIN_EDGE_CAP_ML when the component
       touches the first or last slice: a cap cut by the scan edge; its rim then leaves out fluid-range voxels,
       the rest of the cap that the opening removed) whose 3 mm rim (bone left out) has a
       median HU below RIM_MAX_HU (a globe lies in orbital fat, eyelids and air; CSF spaces lie in brain).
       The globes are the pair mirrored about the cavity's mid-line (lateral separation 30-90 mm, AP and z
       offsets < 15 mm, mid-point within 20 mm of the mid-line), largest total volume first; without a pair,
       one component 12-50 mm from the mid-line with lens tissue at its rim.
    4. Lens: the largest blob (>= MIN_LENS_MM3) of 0.5 mm-smoothed HU > LENS_HU in a 3 mm rim around the
       globe, more than 4 mm from bone.
    5. Globe centre: sphere of radius GLOBE_RADIUS_MM fitted (:func:`_fit_sphere_fixed_radius`) to the
       globe/fat interface (surface voxels away from bone and lens)."""
    cav = np.asarray(intracranial_mask, dtype=bool)
    z = np.asarray(z_positions, dtype=float)
    nz = cav.shape[0]
    if z.size < 2:
        return None
    dz = float(np.median(np.diff(z)))
    f = max(1, int(round(1.0 / float(spacing[1]))))
    px, py = float(spacing[2]) * f, float(spacing[1]) * f
    # crop: the anterior half of the cavity's rows and 40 mm in front of it, its columns +- 10 mm, slices up
    # to its widest slice + 30 mm (all on the working grid of f x f pixel blocks)
    cav_w = np.ascontiguousarray(cav[:, ::f, ::f])
    per_z = np.array([np.count_nonzero(c) for c in cav_w])
    if per_z.sum() * f * f * abs(dz) * float(spacing[1]) * float(spacing[2]) < 3000.0:  # < 3 mL of cranial cavity
        return None
    per_y = cav_w.sum(axis=(0, 2))
    per_x = cav_w.sum(axis=(0, 1))
    cy_w = float(np.dot(np.arange(per_y.size), per_y) / per_y.sum())
    cx_col = (float(np.dot(np.arange(per_x.size), per_x) / per_x.sum()) * f + 0.5 * (f - 1))
    rows, cols = np.nonzero(per_y)[0], np.nonzero(per_x)[0]
    k_top = min(nz, int(np.argmax(per_z)) + int(np.ceil(30.0 / abs(dz))) + 1)
    y0, y1 = max(0, rows[0] - int(40.0 / py)), int(cy_w)
    x0, x1 = max(0, cols[0] - int(10.0 / px)), min(cav_w.shape[2], cols[-1] + int(10.0 / px) + 1)
    if y1 - y0 < 4:
        return None
    sub = _block_mean(np.asarray(hu)[:k_top, y0 * f : y1 * f, x0 * f : x1 * f], f)
    cav_s = cav_w[:k_top, y0:y1, x0:x1][:, : sub.shape[1], : sub.shape[2]]
    near_bone = _box_dilate(sub > BONE_HU, max(1, int(round(2.0 / px))))
    sm = ndi.gaussian_filter(sub, (0, 0.8 / py, 0.8 / px))
    fluid = (sm > FLUID_HU[0]) & (sm < FLUID_HU[1]) & ~near_bone & ~_box_dilate(cav_s, 2)
    r = max(1, int(round(2.0 / px)))
    fluid_raw = fluid
    fluid = ndi.maximum_filter(ndi.minimum_filter(fluid, size=(1, 2 * r + 1, 2 * r + 1)), size=(1, 2 * r + 1, 2 * r + 1))
    lab, n = ndi.label(fluid)
    if n == 0:
        return []
    vox_ml = abs(dz) * px * py / 1000.0
    sizes = np.bincount(lab.ravel()) * vox_ml
    objs = ndi.find_objects(lab)
    cands = []
    r_rim = max(1, int(round(3.0 / px)))
    for i, sl in enumerate(objs, start=1):
        at_edge = sl[0].start == 0 or sl[0].stop >= nz
        # a cap cut by the first/last slice can be tiny: near the orbital roof/floor the 2 mm bone margin and
        # the opening leave only its core (0.06 mL seen for a globe whose centre lies 3 mm outside the range)
        if not (MIN_EDGE_CAP_ML if at_edge else MIN_GLOBE_ML) <= sizes[i] <= MAX_GLOBE_ML:
            continue
        box = (sl[0], slice(max(sl[1].start - r_rim, 0), sl[1].stop + r_rim),
               slice(max(sl[2].start - r_rim, 0), sl[2].stop + r_rim))
        m = lab[box] == i
        rim = _box_dilate(m, r_rim) & ~m & ~near_bone[box]
        if at_edge:  # the opened core of a small cap has the rest of the globe's fluid as its rim: look past it
            rim &= ~fluid_raw[box]
        if not rim.any() or np.median(sm[box][rim]) > RIM_MAX_HU:  # CSF spaces lie in brain, a globe in fat
            continue
        kz, ky, kx = np.nonzero(m)
        sl = (sl[0], box[1], box[2])
        cands.append(dict(i=i, sl=sl, vol=float(sizes[i]),
                          c=np.array([_to_mm((kx + sl[2].start + x0).mean(), f, spacing[2]),
                                      _to_mm((ky + sl[1].start + y0).mean(), f, spacing[1]),
                                      (kz + sl[0].start).mean() * abs(dz)])))
    mid_x = cx_col * float(spacing[2])
    best, best_vol = None, 0.0
    for a in range(len(cands)):
        for b in range(a + 1, len(cands)):
            ca, cb = cands[a]["c"], cands[b]["c"]
            sep = abs(ca[0] - cb[0])
            if not (30.0 <= sep <= 90.0 and abs(ca[1] - cb[1]) < 15.0 and abs(ca[2] - cb[2]) < 15.0):
                continue
            if abs(0.5 * (ca[0] + cb[0]) - mid_x) > 20.0:
                continue
            vol = cands[a]["vol"] + cands[b]["vol"]
            if vol > best_vol:
                best, best_vol = (cands[a], cands[b]), vol
    chosen = list(best) if best else [c for c in cands if 12.0 <= abs(c["c"][0] - mid_x) <= 50.0]
    eyes = []
    for c in chosen:
        eye = _measure_eye(lab, c, sub, f, spacing, z, nz, (y0, x0))
        if best or eye.lens_mm is not None:
            eyes.append(eye)
    if not best and len(eyes) > 1:  # unpaired: keep the largest only
        eyes = [max(eyes, key=lambda e: e.volume_ml)]
    return eyes


def _largest_lens_blob(cand: np.ndarray, voxel_mm3: float) -> np.ndarray:
    """The largest 3-D component of the lens candidates if it holds >= MIN_LENS_MM3 (noise specks are
    smaller), else an empty mask."""
    lab, n = ndi.label(cand)
    if n == 0:
        return cand
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    k = int(np.argmax(sizes))
    return lab == k if sizes[k] * voxel_mm3 >= MIN_LENS_MM3 else np.zeros_like(cand)


def _measure_eye(lab, cand, sub, f, spacing, z, nz, crop_yx) -> Eye:
    """Lens voxels in the rim of one globe component and the globe centre (see :func:`detect_eyes`)."""
    i, sl = cand["i"], cand["sl"]
    px, py = float(spacing[2]) * f, float(spacing[1]) * f
    dz = float(np.median(np.diff(z)))
    pad_xy = int(np.ceil(5.0 / min(px, py)))
    box = (slice(max(sl[0].start - 1, 0), min(sl[0].stop + 1, lab.shape[0])),
           slice(max(sl[1].start - pad_xy, 0), min(sl[1].stop + pad_xy, lab.shape[1])),
           slice(max(sl[2].start - pad_xy, 0), min(sl[2].stop + pad_xy, lab.shape[2])))
    off = np.array([b.start for b in box])
    off_yx = np.array([0, crop_yx[0], crop_yx[1]])
    g = lab[box] == i
    h = sub[box]
    near_bone = _box_dilate(h > BONE_HU, max(1, int(round(4.0 / px))))
    sm = ndi.gaussian_filter(h, (0, 0.5 / py, 0.5 / px))
    rim = _box_dilate(g, max(1, int(round(3.0 / px)))) & ~g & ~near_bone
    lens = _largest_lens_blob(rim & (sm > LENS_HU), abs(dz) * px * py)
    lens_mm = lens_zr = None
    lens_cut = False
    if lens.any():
        lz, ly, lx = np.nonzero(lens)
        k = lz + off[0]
        lens_mm = np.array([_to_mm((lx + off[2] + off_yx[2]).mean(), f, spacing[2]),
                            _to_mm((ly + off[1] + off_yx[1]).mean(), f, spacing[1]),
                            float(np.interp(k.mean(), np.arange(nz), z))])
        lens_zr = (float(z[k.min()]), float(z[k.max()]))
        lens_cut = bool(k.min() == 0 or k.max() == nz - 1)
    # globe/fat interface: surface voxels of the component away from bone and lens
    surf = g & ~ndi.binary_erosion(g, structure=ndi.generate_binary_structure(3, 1), border_value=1)
    surf &= ~_box_dilate(near_bone, 1) & ~_box_dilate(lens, 1)
    # (border_value=1: the faces a scan edge cuts through the globe are not surface; its in-plane rim is)
    globe_mm = None
    sz, sy, sx = np.nonzero(surf)
    if sz.size >= 8:
        pts = np.column_stack([_to_mm(sx + off[2] + off_yx[2], f, spacing[2]),
                               _to_mm(sy + off[1] + off_yx[1], f, spacing[1]), (sz + off[0]) * abs(dz)])
        # a cap cut by the scan edge fits a sphere on either side of it; with no lens in the scan the globe's
        # centre (at the lens's height) lies beyond the edge: start there
        start = pts.mean(axis=0)
        gz = np.nonzero(g.any(axis=(1, 2)))[0] + off[0]
        if lens_mm is None and gz.min() == 0:
            start[2] = -0.5 * abs(dz)
        elif lens_mm is None and gz.max() == nz - 1:
            start[2] = (nz - 0.5) * abs(dz)
        # surface voxels lie about half a voxel inside the true interface
        c = _fit_sphere_fixed_radius(pts, GLOBE_RADIUS_MM - 0.5 * px, start)
        globe_mm = np.array([c[0], c[1], float(z[0] + np.sign(dz) * c[2])])
    return Eye(globe_mm=globe_mm, lens_mm=lens_mm, lens_z_range_mm=lens_zr, lens_cut=lens_cut, volume_ml=cand["vol"])


def _edges(z_positions) -> tuple[float, float, float]:
    z = np.asarray(z_positions, dtype=float)
    dz = float(np.median(np.diff(z))) if z.size > 1 else 0.0
    return float(z[0] - dz / 2), float(z[-1] + dz / 2), dz


def lens_z_interval(eye: Eye, z_positions) -> tuple[float, float] | None:
    """(bottom, top) z of one lens, in mm. Lens tissue in the scan: its centroid +- LENS_RADIUS_MM, each end
    kept between the outermost slice with lens tissue and the next slice beyond it (where the true end
    must lie); when the scan edge cuts the lens, the centre comes from the globe fit (the lens lies at the
    globe's anterior pole, at about the globe centre's height in a near-axial head). No lens tissue: the globe
    centre +- LENS_RADIUS_MM. None when neither is measured."""
    _lo, _hi, dz = _edges(z_positions)
    dz = abs(dz)
    if eye.lens_mm is not None:
        zc = eye.lens_mm[2]
        if eye.lens_cut and eye.globe_mm is not None:
            zc = eye.globe_mm[2]
        z_min, z_max = eye.lens_z_range_mm
        bottom = float(np.clip(zc - LENS_RADIUS_MM, z_min - dz, z_min))
        top = float(np.clip(zc + LENS_RADIUS_MM, z_max, z_max + dz))
        return bottom, top
    if eye.globe_mm is not None:
        return float(eye.globe_mm[2] - LENS_RADIUS_MM), float(eye.globe_mm[2] + LENS_RADIUS_MM)
    return None


@register_iqm(
    unit="0/1",
    direction="lower_is_better",
    formula="1 when lens tissue (a >= 5 mm3 blob of 0.5 mm-smoothed HU > 60 in the rim of a detected eye globe) is in "
    "the scan, or the globe centre +- 4.5 mm places >= 2 mm of lens inside the range; else 0",
    reference=ICRP118,
    regions=("head",),
)
def lens_in_scan_range(hu, spacing, intracranial_mask, z_positions):
    """Whether an eye lens lies inside the scanned range (1) or not (0); 0 is best where the indication
    allows sparing the lenses.

    Eyes are detected from HU and geometry (:func:`detect_eyes`). None when the scan holds no cranial cavity.
    Known limitation: a lens cut by the scan edge over less than the slab of one slice may hold no visible
    lens tissue and read 0."""
    z = np.asarray(z_positions, dtype=float)
    if z.size < 3:
        return None
    eyes = detect_eyes(hu, spacing, intracranial_mask, z)
    if eyes is None:
        return None
    lo, hi, _dz = _edges(z)
    for e in eyes:
        if e.lens_mm is not None:
            return 1.0
        iv = lens_z_interval(e, z)
        if iv is not None and min(hi, iv[1]) - max(lo, iv[0]) >= MIN_PREDICTED_MM:
            return 1.0
    return 0.0


@register_iqm(
    unit="mm",
    direction="lower_is_better",
    formula="max over the detected eyes of |[z_lens_bottom, z_lens_top] intersected with [z_scan_bottom, z_scan_top]|; "
    "lens z-extent = centre +- 4.5 mm (centroid of the lens voxels, or the globe centre; see lens_z_interval); "
    "0 when no eye is in the scan",
    reference=ICRP118,
    regions=("head",),
)
def lens_extent_in_range_mm(hu, spacing, intracranial_mask, z_positions):
    """Length (along z) of eye lens inside the scanned range, for the more exposed eye: 0 (lenses spared,
    best) to about 9 mm (a whole lens in the primary beam).

    None when the scan holds no cranial cavity."""
    z = np.asarray(z_positions, dtype=float)
    if z.size < 3:
        return None
    eyes = detect_eyes(hu, spacing, intracranial_mask, z)
    if eyes is None:
        return None
    lo, hi, _dz = _edges(z)
    inside = [0.0]
    for e in eyes:
        iv = lens_z_interval(e, z)
        if iv is not None:
            inside.append(max(0.0, min(hi, iv[1]) - max(lo, iv[0])))
    return float(max(inside))
