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
    return mask.reshape(mask.shape[0], -1).sum(axis=1) * float(spacing[1] * spacing[2])


def estimate_vertex_z(body_area_mm2: np.ndarray, z_positions: np.ndarray) -> tuple[float, bool]:
    """z of the vertex from the body cross-section profile; returns (z, cut).

    Not cut (top slice area < 3 % of the largest): the vertex lies within the last slice with tissue,
    z = z_last + dz/2. Cut: the skull dome is modelled as the top of an ellipsoid, whose cross-section
    area is a concave quadratic in z, A(z) = a + b z + c z^2; it is fitted by least squares to the slices
    above the widest one and the vertex is its upper root. With fewer than 4 such slices (or a fit that
    is not concave) the dome is taken as a half-ellipsoid centred on the widest slice,
    A(z) = A_max (1 - ((z - z_max) / h)^2), h^2 = sum((z - z_max)^2 u) / sum(u^2), u = 1 - A/A_max.
    """
    z = np.asarray(z_positions, dtype=float)
    a = np.asarray(body_area_mm2, dtype=float)
    lo, hi, dz = _edges(z)
    a_max = a.max()
    k_max = int(np.argmax(a))
    if a[-1] < 0.03 * a_max:
        present = np.nonzero(a >= 0.03 * a_max)[0]
        return float(z[present[-1]] + dz / 2), False
    sel = np.arange(k_max, len(a))
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


@register_iqm(
    unit="mm",
    direction="higher_is_better",
    formula="skull_base_margin = z_skull_base - z_scan_bottom; z_skull_base = lower edge of the lowest slice whose "
    "cranial cavity area >= 20 % of its maximum; 0 when that slice is the first one (cut)",
    reference=EUR16262,
    regions=("head",),
)
def skull_base_margin_mm(intracranial_mask, spacing, z_positions):
    """Distance from the lower scan edge to the skull base (foramen magnum level), 0 when the skull base is cut.

    Below the foramen magnum the closed skull ring gives way to the spinal canal, whose area is a few
    per cent of the cranial cavity: the 20 % threshold marks the transition. The depth of a cut cannot be
    measured from inside the scan, so a cut reads 0 (fail). Known limitation: with head pitch or roll the
    skull base is oblique to the slices and this level reads below the foramen magnum (phantom: 9 mm at
    8 deg pitch, 4 mm at 5 deg roll)."""
    z = np.asarray(z_positions, dtype=float)
    if z.size < 3:
        return None
    area = _area_profile(intracranial_mask, spacing)
    if area.max() <= 0:
        return None
    lo, _hi, dz = _edges(z)
    inside = np.nonzero(area >= 0.2 * area.max())[0]
    first = int(inside[0])
    if first == 0:
        return 0.0
    return float(z[first] - dz / 2 - lo)


def _lung_extent(lung_mask, spacing, min_area_cm2: float = 3.0):
    area_cm2 = _area_profile(lung_mask, spacing) / 100.0
    present = np.nonzero(area_cm2 >= min_area_cm2)[0]
    return present


@register_iqm(
    unit="mm",
    direction="higher_is_better",
    formula="lung_apex_margin = z_scan_top - z_apex; z_apex = upper edge of the highest slice with >= 3 cm2 of lung; "
    "0 when that slice is the last one (cut)",
    reference=EUR16262,
    regions=("chest",),
)
def lung_apex_margin_mm(lung_mask, spacing, z_positions):
    """Distance from the lung apices to the upper scan edge; 0 when the apex is cut."""
    z = np.asarray(z_positions, dtype=float)
    present = _lung_extent(lung_mask, spacing)
    if z.size < 3 or present.size == 0:
        return None
    _lo, hi, dz = _edges(z)
    top = int(present[-1])
    if top == len(z) - 1:
        return 0.0
    return float(hi - (z[top] + dz / 2))


@register_iqm(
    unit="mm",
    direction="higher_is_better",
    formula="lung_base_margin = z_base - z_scan_bottom; z_base = lower edge of the lowest slice with >= 3 cm2 of lung "
    "(costophrenic recesses); 0 when that slice is the first one (cut)",
    reference=EUR16262,
    regions=("chest",),
)
def lung_base_margin_mm(lung_mask, spacing, z_positions):
    """Distance from the lung bases (costophrenic angles) to the lower scan edge; 0 when the bases are cut."""
    z = np.asarray(z_positions, dtype=float)
    present = _lung_extent(lung_mask, spacing)
    if z.size < 3 or present.size == 0:
        return None
    lo, _hi, dz = _edges(z)
    bottom = int(present[0])
    if bottom == 0:
        return 0.0
    return float((z[bottom] - dz / 2) - lo)
