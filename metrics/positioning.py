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
    # centroid from the marginal counts (as np.nonzero(...).mean(), without listing every voxel)
    per_y = m.sum(axis=(0, 2), dtype=np.int64)
    per_x = m.sum(axis=(0, 1), dtype=np.int64)
    n = per_x.sum()
    cx = float(np.dot(np.arange(per_x.size), per_x) / n)
    cy = float(np.dot(np.arange(per_y.size), per_y) / n)
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


def brain_axes(intracranial_mask, spacing) -> tuple[np.ndarray, np.ndarray] | None:
    """Principal axes of the cranial cavity (PCA of voxel positions in mm, LPS): returns (ap_axis, lr_axis),
    unit vectors oriented towards +y (posterior) and +x (left). The cavity is mirror-symmetric about the
    mid-sagittal plane, so its principal axes lie in (AP) and across (LR) that plane."""
    zz, yy, xx = np.nonzero(intracranial_mask)
    if zz.size < 1000:
        return None
    pts = np.column_stack([xx * spacing[2], yy * spacing[1], zz * spacing[0]]).astype(float)
    pts -= pts.mean(axis=0)
    _w, v = np.linalg.eigh(np.cov(pts.T))
    ap = v[:, int(np.argmax(np.abs(v[1])))]
    lr = v[:, int(np.argmax(np.abs(v[0])))]
    ap = ap if ap[1] > 0 else -ap
    lr = lr if lr[0] > 0 else -lr
    return ap, lr


HEAD_ANGLE_REF = ("Mid-sagittal plane symmetry for head positioning: Liu Y et al., Med Phys 2001 (ideal "
                  "mid-sagittal plane); angles follow the phantom convention yaw about z, pitch about x, roll about y")


@register_iqm(unit="deg", direction="closer_to_target", regions=("head",), reference=HEAD_ANGLE_REF,
              formula="yaw = atan2(-ap_x, ap_y), ap = AP principal axis of the cranial cavity")
def head_yaw_deg(intracranial_mask, spacing):
    """Head rotation about the scanner z axis (nose towards the patient's left is +); 0 is best."""
    axes = brain_axes(intracranial_mask, spacing)
    return None if axes is None else float(np.degrees(np.arctan2(-axes[0][0], axes[0][1])))


@register_iqm(unit="deg", direction="closer_to_target", regions=("head",), reference=HEAD_ANGLE_REF,
              formula="roll = asin(-lr_z / cos(pitch)), lr = LR principal axis of the cranial cavity")
def head_roll_deg(intracranial_mask, spacing):
    """Head tilt towards a shoulder (rotation about the AP axis); 0 is best."""
    axes = brain_axes(intracranial_mask, spacing)
    if axes is None:
        return None
    ap, lr = axes
    cos_p = max(np.sqrt(max(1.0 - ap[2] ** 2, 0.0)), 1e-6)
    return float(np.degrees(np.arcsin(np.clip(-lr[2] / cos_p, -1, 1))))


@register_iqm(unit="deg", direction="closer_to_target", regions=("head",), reference=HEAD_ANGLE_REF,
              formula="pitch = asin(ap_z), ap = AP principal axis of the cranial cavity")
def head_pitch_deg(intracranial_mask, spacing):
    """Flexion/extension of the head (chin down is +) as the tilt of the cranial cavity's long axis to the
    axial plane. An approximation of the scan-baseline angle: the orbitomeatal line differs from the brain
    axis by an anatomical offset, which landmark detection (detectors issue) will remove."""
    axes = brain_axes(intracranial_mask, spacing)
    return None if axes is None else float(np.degrees(np.arcsin(np.clip(axes[0][2], -1, 1))))
