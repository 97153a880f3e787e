"""Coverage IQMs: is the anatomy the protocol requires inside the scanned z-range, and by how much?

Conventions: z is the physical slice position (mm, superior positive, ``qc.io`` canonical LPS). The
scan range runs from the lower edge of the first slice to the upper edge of the last one
(slice centre -/+ half the slice spacing). A margin is the distance from a landmark to the scan edge
beyond it: positive = landmark inside with that much room, <= 0 = landmark cut.
"""

from __future__ import annotations

import numpy as np

from metrics.registry import register_iqm

EUR16262 = ("European Commission EUR 16262 (1999), European Guidelines on Quality Criteria for CT: "
            "head - 'visually sharp reproduction of the whole brain from the foramen magnum to the vertex'; "
            "chest - 'from the lung apices to the costophrenic angles/lung bases'")


def _edges(z_positions: np.ndarray) -> tuple[float, float, float]:
    z = np.asarray(z_positions, dtype=float)
    dz = float(np.median(np.diff(z))) if z.size > 1 else 0.0
    return z[0] - dz / 2, z[-1] + dz / 2, dz


def _area_profile(mask: np.ndarray, spacing) -> np.ndarray:
    """Cross-section area (mm2) per slice. (np.count_nonzero per slice: ~4x faster than a sum over the
    reshaped volume on 512 x 512 slices.)"""
    return np.array([np.count_nonzero(s) for s in mask], dtype=float) * float(spacing[1] * spacing[2])


def estimate_vertex_z(body_area_mm2: np.ndarray, z_positions: np.ndarray) -> tuple[float, bool]:
    """z of the vertex from the body cross-section profile; returns (z, cut).

    Not cut (top slice area < 3 % of the largest): the vertex lies between the last slice with tissue and
    the next slice; it is the upper root of the quadratic below, kept in that interval. Cut: the skull dome
    is modelled as the top of an ellipsoid, whose cross-section area is a concave quadratic in z,
    A(z) = a + b z + c z^2; it is fitted by least squares to the slices above the widest one and the vertex
    is its upper root. With fewer than 4 such slices (or a fit that
    is not concave) the dome is taken as a half-ellipsoid centred on the widest slice,
    A(z) = A_max (1 - ((z - z_max) / h)^2), h^2 = sum((z - z_max)^2 u) / sum(u^2), u = 1 - A/A_max.
    """
    z = np.asarray(z_positions, dtype=float)
    a = np.asarray(body_area_mm2, dtype=float)
    lo, hi, dz = _edges(z)
    a_max = a.max()
    k_max = int(np.argmax(a))
    sel = np.arange(k_max, len(a))
    if a[-1] < 0.03 * a_max:
        # vertex between the last slice with tissue and the next one: the root of the dome's quadratic, kept
        # in that interval (centre of it when the fit fails)
        last = int(np.nonzero(a > 0)[0][-1])
        z_v = z[last] + dz / 2
        dome = np.arange(k_max, last + 1)
        if dome.size >= 4:
            c2, c1, c0 = np.polyfit(z[dome] - z[k_max], a[dome], 2)
            disc = c1 * c1 - 4 * c2 * c0
            if c2 < 0 and disc > 0:
                z_v = z[k_max] + max((-c1 + np.sqrt(disc)) / (2 * c2), (-c1 - np.sqrt(disc)) / (2 * c2))
        return float(np.clip(z_v, z[last], z[last] + dz)), False
    if sel.size >= 4:
        zc = z[sel] - z[k_max]
        c2, c1, c0 = np.polyfit(zc, a[sel], 2)
        disc = c1 * c1 - 4 * c2 * c0
        if c2 < 0 and disc > 0:
            root = max((-c1 + np.sqrt(disc)) / (2 * c2), (-c1 - np.sqrt(disc)) / (2 * c2))
            return float(max(z[k_max] + root, hi)), True
    u = 1.0 - a[sel] / a_max
    d2 = (z[sel] - z[k_max]) ** 2
    if np.sum(u * u) < 1e-6:  # flat profile to the top: only a lower bound is known
        return float(hi), True
    c = float(np.sqrt(np.sum(d2 * u) / np.sum(u * u)))
    return float(max(z[k_max] + c, hi)), True


@register_iqm(
    unit="mm",
    direction="higher_is_better",
    formula="vertex_margin = z_scan_top - z_vertex; z_vertex from the body cross-section profile (ellipsoidal dome fit, A(z) quadratic, when cut)",
    reference=EUR16262,
    regions=("head",),
)
def vertex_margin_mm(body_mask, spacing, z_positions):
    """Distance from the vertex (top of the skull) to the upper scan edge; negative when the vertex is cut.

    When the dome is cut, the missing height is extrapolated from the cross-section profile
    (:func:`estimate_vertex_z`), so the value says by how much the range should be extended."""
    z = np.asarray(z_positions, dtype=float)
    if z.size < 3:
        return None
    area = _area_profile(body_mask, spacing)
    if area.max() <= 0:
        return None
    _lo, hi, _dz = _edges(z)
    z_vertex, _cut = estimate_vertex_z(area, z)
    return float(hi - z_vertex)


NO_CAVITY = "no cranial cavity"
BASE_MIN_MM2 = 1500.0  # skull-base floor needed in the scan (the adult skull base is ~130 cm2)
FORAMEN_MAX_SD_MM = 25.0  # foramen (~35 x 30 mm): in-plane SD 4-9 mm in the phantom runs (16 seen once, partly cut);
#                           cavity voxels under a misfitted plane at an oblique scan edge spread 30-45 mm
FORAMEN_MIN_MM3 = 100.0  # hole voxels needed to place the foramen magnum (it is ~35 x 30 mm; a 4.5 mm slab ~ 3.7 mL)
FM_POSTERIOR_FRACTION = 0.3  # no hole seen: foramen centre assumed 0.3 AP semi-axes behind the base centre


def head_frame(intracranial_mask, spacing, z_positions, in_plane_mm: float = 1.9):
    """Cranial cavity voxels in the head's own frame, from a regular in-plane subsample (every k-th row and
    column, k = round(in_plane_mm / pixel)): returns dict(pts = (x, y, z) mm with z physical, z_index,
    w = mm3 per point, centroid, si, ap, lr, u/v/t = coordinates along si/lr/ap) or None (< 1000 voxels).

    Axes: PCA of the cavity (:func:`metrics.positioning.brain_axes`): ap, lr from the covariance, si = lr x ap
    oriented superior; ap is re-orthogonalised. The cavity's sections perpendicular to si are what a scan
    parallel to the head's own axial plane would show, whatever the pitch and roll."""
    from metrics.positioning import _pca_axes

    m = np.asarray(intracranial_mask, dtype=bool)
    step = max(1, int(round(in_plane_mm / float(spacing[1]))))
    zz, yy, xx = np.nonzero(np.ascontiguousarray(m[:, ::step, ::step]))
    if zz.size * step * step < 1000:
        return None
    z = np.asarray(z_positions, dtype=float)
    pts = np.column_stack([xx * step * spacing[2], yy * step * spacing[1], z[zz]]).astype(float)
    centroid = pts.mean(axis=0)
    ap, lr = _pca_axes(pts - centroid)
    si = np.cross(lr, ap)
    si /= np.linalg.norm(si)
    if si[2] < 0:
        si = -si
    ap = ap - (ap @ si) * si
    ap /= np.linalg.norm(ap)
    lr = np.cross(ap, si)
    d = pts - centroid
    w = float(abs(z[1] - z[0]) * spacing[1] * spacing[2] * step * step) if z.size > 1 else 0.0
    return dict(pts=pts, z_index=zz, w=w, centroid=centroid, si=si, ap=ap, lr=lr, u=d @ si, v=d @ lr, t=d @ ap)


def _fit_floor_plane(points: np.ndarray, tol: float):
    """Plane z = a x + b y + c through most of ``points`` (x, y, z mm) by RANSAC (scikit-learn's
    RANSACRegressor, fixed seed: deterministic); returns (unit normal with n_z > 0, offset n.p, inlier mask)
    or None. A robust fit is needed: the floor points of the cavity's curved wall lie far above the plane."""
    from sklearn.linear_model import LinearRegression, RANSACRegressor

    if len(points) < 10:
        return None
    model = RANSACRegressor(LinearRegression(), residual_threshold=tol, max_trials=200, random_state=0)
    try:
        model.fit(points[:, :2], points[:, 2])
    except ValueError:  # no consensus set
        return None
    a, b = model.estimator_.coef_
    n = np.array([-a, -b, 1.0]) / np.sqrt(a * a + b * b + 1.0)
    return n, float(model.estimator_.intercept_ * n[2]), model.inlier_mask_


def _column_floors(cell: np.ndarray, u: np.ndarray, gap_mm: float) -> np.ndarray:
    """Index of the floor point of each column: walking down from the top (largest u), the last point before
    the first gap in u larger than ``gap_mm``. Below such a gap lies tissue that the skull ring encloses
    under the skull-base plate (a slice crossing the plate obliquely fills it in), not the cavity."""
    order = np.lexsort((-u, cell))
    cs, us = cell[order], u[order]
    new_cell = np.ones(order.size, dtype=bool)
    new_cell[1:] = cs[1:] != cs[:-1]
    gap = np.zeros(order.size, dtype=bool)
    gap[1:] = ~new_cell[1:] & (us[:-1] - us[1:] > gap_mm)
    run = np.cumsum(new_cell | gap)
    top_run = run == np.maximum.accumulate(np.where(new_cell, run, 0))
    last_of_top = top_run & np.append(~top_run[1:] | new_cell[1:], True)
    return order[last_of_top]


def estimate_foramen_magnum(intracranial_mask, spacing, z_positions, cell_mm: float = 4.0):
    """Foramen magnum centre (x, y, z in mm; z physical): returns (point or None, reason).

    1. Columns: the cavity is cut into ``cell_mm`` square columns along its own superior axis
       (:func:`head_frame`), so head pitch and roll do not matter. The bottom of the top run of voxels of a
       column (:func:`_column_floors`) is a point of the cavity's floor, unless it lies on the scan's first
       slice (there the scan edge ends the cavity).
    2. Skull base plane: RANSAC plane through those floor points (:func:`_fit_floor_plane`, inliers within
       half a slice + 1 mm; lowered by half a slice, as the floor voxels lie 0-1 slice above the true
       floor); the curved periphery and the wall are outliers. It must hold >= 15 cm2 of floor
       and lie within 25 deg of the cavity's axial plane, else the scan shows no skull base (cut).
    3. Foramen: the hole under the plane, cavity voxels 1.5-6 mm below it; its centroid projected onto the
       plane is the foramen centre. A hole spreading like a whole cavity section (in-plane SD > 25 mm) is
       what an oblique scan edge leaves: cut. No hole in the scan (it is below the scan edge or the scan ends
       in the foramen): the centre is placed FM_POSTERIOR_FRACTION of the cavity's AP semi-axis behind the
       cavity's centre, on the plane (adult anatomy: the foramen lies in the posterior fossa)."""
    hf = head_frame(intracranial_mask, spacing, z_positions)
    if hf is None:
        return None, NO_CAVITY
    z = np.asarray(z_positions, dtype=float)
    dz = float(abs(np.median(np.diff(z))))
    pts, u, v, t, zi = hf["pts"], hf["u"], hf["v"], hf["t"], hf["z_index"]
    c, si, ap = hf["centroid"], hf["si"], hf["ap"]
    cv = np.floor(v / cell_mm).astype(np.int64)
    ct = np.floor(t / cell_mm).astype(np.int64)
    cv -= cv.min()
    ct -= ct.min()
    cell = cv * (ct.max() + 1) + ct
    floor = _column_floors(cell, u, gap_mm=dz + 3.0)
    floor = floor[zi[floor] > 0]
    if floor.size * cell_mm**2 < BASE_MIN_MM2:
        return None, "the scan ends at or above the skull base (too little cavity floor in the scan)"
    fp = pts[floor] - c
    fit = _fit_floor_plane(fp, tol=0.5 * dz + 1.0)  # floor points sit 0-dz above the plane (slice staircase)
    if fit is None:
        return None, "no flat skull base in the scan"
    n, off, inl = fit
    off -= 0.5 * dz * n[2]  # floor points (voxel centres) lie 0-dz above the plane: on average dz/2
    if inl.sum() * cell_mm**2 < BASE_MIN_MM2 or np.degrees(np.arccos(np.clip(n @ si, -1, 1))) > 25.0:
        return None, "no flat skull base in the scan (the cavity floor seen is its curved wall or the scan edge)"
    d = (pts - c) @ n - off
    hole = (d >= -6.0) & (d < -1.5)
    if hole.sum() * hf["w"] >= FORAMEN_MIN_MM3:
        q = pts[hole] - pts[hole].mean(axis=0)
        q -= np.outer(q @ n, n)
        spread = float(np.sqrt(np.linalg.eigvalsh(np.cov(q.T)).max()))
        if spread > FORAMEN_MAX_SD_MM:
            return None, f"what lies under the skull base plane spreads {spread:.0f} mm: the scan edge cuts the cavity"
        p = pts[hole].mean(axis=0) - c
        up = np.array([0.0, 0.0, 1.0]) - n[2] * n  # in-plane direction in which the base plane rises
        if (zi[hole] == 0).any() and np.linalg.norm(up) > 0.05:
            # the scan edge cuts the hole: its visible part lies on the plane's high side, and its centroid too.
            # Across the rise the visible width is the full diameter (while less than half is cut): centre =
            # high edge - half that width along the rise, middle of the width across it
            up /= np.linalg.norm(up)
            across = np.cross(n, up)
            s_up, s_across = (pts[hole] - c) @ up, (pts[hole] - c) @ across
            half = 0.5 * (s_across.max() - s_across.min())
            p = (s_up.max() - half) * up + 0.5 * (s_across.max() + s_across.min()) * across
        reason = "ok"
    else:
        half_ap = float(np.sqrt(5.0) * t.std())  # semi-axis of a uniform ellipsoid from its SD
        ap_in_plane = ap - (ap @ n) * n
        p = FM_POSTERIOR_FRACTION * half_ap * ap_in_plane / np.linalg.norm(ap_in_plane)  # from the cavity centre
        reason = "foramen not in the scan: placed by anatomy"
    return c + p - (p @ n - off) * n, reason


@register_iqm(
    unit="mm",
    direction="higher_is_better",
    formula="skull_base_margin = z_FM - z_scan_bottom; z_FM = foramen magnum centre on the skull-base plane, the lowest "
    "level of the cranial cavity with >= 20 % of its largest cross-section, profiled along the cavity's own superior "
    "axis (PCA) so that head pitch/roll do not bias it; 0 when z_FM <= z_scan_bottom (cut)",
    reference=EUR16262,
    regions=("head",),
)
def skull_base_margin_mm(intracranial_mask, spacing, z_positions):
    """Distance from the lower scan edge to the skull base (foramen magnum), 0 when the skull base is cut.

    Below the foramen magnum the closed skull ring gives way to the spinal canal, whose area is a few
    per cent of the cranial cavity: the 20 % threshold marks the transition. Cross-sections are taken
    perpendicular to the cavity's long (superior) axis rather than along the scanner z axis, so a pitched
    or rolled head does not read low (:func:`estimate_foramen_magnum`). The depth of a cut cannot be
    measured from inside the scan, so a cut reads 0 (fail)."""
    z = np.asarray(z_positions, dtype=float)
    if z.size < 3:
        return None
    fm, reason = estimate_foramen_magnum(intracranial_mask, spacing, z)
    if fm is None:
        return None if reason == NO_CAVITY else 0.0
    lo, _hi, _dz = _edges(z)
    return float(max(fm[2] - lo, 0.0))


def lung_end_z(area_cm2: np.ndarray, z_positions, end: str, min_area_cm2: float = 3.0) -> float | None:
    """z of the lung apex (``end='apex'``) or base (``end='base'``) from the lung area profile, at sub-slice
    precision, or None when no slice holds ``min_area_cm2`` of lung.

    Near the apex (a dome) and the bases (the costophrenic recesses around the diaphragm dome) the lung
    cross-section grows about linearly with the distance from the end (a paraboloid cap; a thin annulus),
    so the end is extrapolated linearly from the two outermost slices with >= ``min_area_cm2``, and kept
    between the outermost slice with any lung and the next slice beyond it (where the end must lie; half
    a slice beyond when the profile does not taper). The end may so lie beyond the scan edge: cut."""
    a = np.asarray(area_cm2, dtype=float)
    z = np.asarray(z_positions, dtype=float)
    if end == "base":  # mirror: the same code walks down from the top
        a, z = a[::-1], z[::-1]
    dz = float(z[-1] - z[-2]) if z.size > 1 else 0.0
    present = np.nonzero(a >= min_area_cm2)[0]
    if present.size == 0:
        return None
    t = int(present[-1])
    k_any = int(np.nonzero(a > 0)[0][-1])
    z_end = z[k_any] + dz / 2
    if t >= 1 and a[t - 1] > a[t]:
        z_end = z[t] + a[t] / (a[t - 1] - a[t]) * dz
    lo_b, hi_b = sorted((z[k_any], z[k_any] + dz))
    return float(np.clip(z_end, lo_b, hi_b))


@register_iqm(
    unit="mm",
    direction="higher_is_better",
    formula="lung_apex_margin = z_scan_top - z_apex; z_apex extrapolated linearly from the lung area of the two highest "
    "slices with >= 3 cm2 of lung (see lung_end_z); 0 when z_apex >= z_scan_top (cut)",
    reference=EUR16262,
    regions=("chest",),
)
def lung_apex_margin_mm(lung_mask, spacing, z_positions):
    """Distance from the lung apices to the upper scan edge; 0 when the apex is cut."""
    z = np.asarray(z_positions, dtype=float)
    if z.size < 3:
        return None
    z_apex = lung_end_z(_area_profile(lung_mask, spacing) / 100.0, z, "apex")
    if z_apex is None:
        return None
    _lo, hi, _dz = _edges(z)
    return float(max(hi - z_apex, 0.0))


@register_iqm(
    unit="mm",
    direction="higher_is_better",
    formula="lung_base_margin = z_base - z_scan_bottom; z_base (costophrenic recesses) extrapolated linearly from the "
    "lung area of the two lowest slices with >= 3 cm2 of lung (see lung_end_z); 0 when z_base <= z_scan_bottom (cut)",
    reference=EUR16262,
    regions=("chest",),
)
def lung_base_margin_mm(lung_mask, spacing, z_positions):
    """Distance from the lung bases (costophrenic angles) to the lower scan edge; 0 when the bases are cut."""
    z = np.asarray(z_positions, dtype=float)
    if z.size < 3:
        return None
    z_base = lung_end_z(_area_profile(lung_mask, spacing) / 100.0, z, "base")
    if z_base is None:
        return None
    lo, _hi, _dz = _edges(z)
    return float(max(z_base - lo, 0.0))
