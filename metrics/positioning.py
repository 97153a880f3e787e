"""Positioning IQMs: patient centring relative to the scanner isocentre.

Mis-centring matters because bow-tie filters and automatic exposure control assume a centred patient:
a vertical offset of 2-3 cm raises surface dose and image noise markedly (Toth, Ge & Daly 2007;
Kaasalainen et al. 2014). The isocentre comes from ``DataCollectionCenterPatient`` where the scanner
records it, else from the centre of the reconstructed field of view (``FOVCenterLPS``, written by
``qc.io``), which is the isocentre unless the reconstruction was targeted off-centre.
"""

from __future__ import annotations

import numpy as np

from metrics.registry import register_iqm

TOTH2007 = ("Toth T, Ge Z, Daly MP. The influence of patient centering on CT dose and image noise. "
            "Med Phys 2007;34(7):3093-3101; Kaasalainen T et al. AJR 2014;202:W587")


def body_centroid_offset_mm(body_mask, spacing, isocenter_xy) -> tuple[float, float] | None:
    """Area-weighted mean (x, y) of the body cross-sections minus the isocentre, in mm (LPS: +x patient
    left, +y posterior). Slices whose body area is below 20 % of the largest (vertex, neck, edges) are
    left out so that the trunk/skull, not a tapering end, decides."""
    area = body_mask.reshape(body_mask.shape[0], -1).sum(axis=1)
    if area.max() == 0:
        return None
    sel = np.nonzero(area >= 0.2 * area.max())[0]
    m = body_mask[sel]
    zz, yy, xx = np.nonzero(m)
    cx, cy = xx.mean(), yy.mean()
    return float((cx - isocenter_xy[0]) * spacing[2]), float((cy - isocenter_xy[1]) * spacing[1])


def _prone(metadata) -> bool:
    pos = str((metadata or {}).get("PatientPosition", "HFS")).upper()
    return pos.endswith("P") and not pos.endswith("DP")  # HFP/FFP prone; HFDL etc. are decubitus


@register_iqm(
    unit="mm",
    direction="closer_to_target",
    formula="dy = (mean_y(body) - y_iso) * dy_px; + = patient centre below the isocentre (table too low) for a supine "
    "patient (sign flipped for prone so that + is always 'below')",
    reference=TOTH2007,
)
def centering_offset_vertical_mm(body_mask, spacing, isocenter_xy, metadata):
    """Vertical (anterior-posterior) offset of the patient's centre from the isocentre; 0 is best.

    Target 0 mm; the table height decides it."""
    off = body_centroid_offset_mm(body_mask, spacing, isocenter_xy)
    if off is None:
        return None
    return -off[1] if _prone(metadata) else off[1]


@register_iqm(
    unit="mm",
    direction="closer_to_target",
    formula="dx = (mean_x(body) - x_iso) * dx_px; + = towards the patient's left",
    reference=TOTH2007,
)
def centering_offset_lateral_mm(body_mask, spacing, isocenter_xy):
    """Lateral (left-right) offset of the patient's centre from the isocentre; 0 is best."""
    off = body_centroid_offset_mm(body_mask, spacing, isocenter_xy)
    return None if off is None else off[0]
