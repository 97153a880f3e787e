"""Positioning IQMs: patient centring relative to the scanner isocentre, head angles and the orbitomeatal
scan baseline, arms in the chest field of view.

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
    # centroid from the per-slice marginal counts (as np.nonzero(...).mean(), without listing every voxel and
    # without copying the selected slices: reductions only)
    row_counts = body_mask.sum(axis=2, dtype=np.int64)  # [z, y]
    area = row_counts.sum(axis=1)
    if area.max() == 0:
        return None
    sel = np.nonzero(area >= 0.2 * area.max())[0]
    per_y = row_counts[sel].sum(axis=0)
    per_x = body_mask.sum(axis=1, dtype=np.int64)[sel].sum(axis=0)
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
    return _pca_axes(pts - pts.mean(axis=0))


def _pca_axes(centred_pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ap_axis, lr_axis) of centred (x, y, z) points: the eigenvectors of their covariance closest to
    the y and x axes, oriented towards +y (posterior) and +x (left)."""
    _w, v = np.linalg.eigh(np.cov(centred_pts.T))
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
    axial plane. The scan baseline itself, from landmarks, is ``orbitomeatal_angle_deg``: the orbitomeatal
    line differs from the brain axis by an anatomical offset (phantom: about -5 deg)."""
    axes = brain_axes(intracranial_mask, spacing)
    return None if axes is None else float(np.degrees(np.arcsin(np.clip(axes[0][2], -1, 1))))


# ------------------------------------------------------------------------------------------------
# scan baseline: the orbitomeatal line
# ------------------------------------------------------------------------------------------------

AIR_HU = -400.0
EAM_MIN_MM3 = 20.0   # smallest air canal accepted as an external auditory meatus (an adult EAM is ~7-9 mm wide)
OM_REF = ("Orbitomeatal (canthomeatal) line, the radiographic baseline of head CT: lateral canthus/orbit centre to the "
          "centre of the external auditory meatus; ACR-ASNR-SPR Practice Parameter for CT of the Brain (2020): scan "
          "plane parallel to the OM line or angled to spare the lenses (supraorbitomeatal)")


def detect_ear_canals(hu, spacing, intracranial_mask, z_positions) -> list[np.ndarray] | None:
    """Centres (x, y, z mm; z physical) of the external auditory meati, 0-2 of them (left/right order not
    guaranteed), or None when the scan holds no cranial cavity.

    The meatus is the air canal (< -400 HU) that runs through the temporal bone from the side of the head
    at the level of the skull base: candidates are air voxels within 3 mm of bone (> 300 HU; air outside the
    head is at least the scalp's thickness away) from 3 mm below to 25 mm above the skull-base level (the
    2nd percentile of the cavity's height), lying in the head's own frame (:func:`metrics.coverage.head_frame`)
    more than 60 % of the cavity's half-width from the mid-sagittal plane and within 40 % of its AP
    semi-axis of its coronal plane (the paranasal sinuses are anterior, in the midline). One canal per
    side: the side's air voxels' centroid; a side whose canal reaches the first or last slice (cut by the
    scan edge) is left out."""
    from metrics.coverage import head_frame

    z = np.asarray(z_positions, dtype=float)
    hf = head_frame(intracranial_mask, spacing, z, in_plane_mm=3.0)  # axes and extents only: a sparser sample will do
    if hf is None:
        return None
    c, si, ap, lr = hf["centroid"], hf["si"], hf["ap"], hf["lr"]
    half_w = float(np.sqrt(5.0) * hf["v"].std())
    half_ap = float(np.sqrt(5.0) * hf["t"].std())
    u_base = float(np.percentile(hf["u"], 2.0))  # about the skull-base level (the foramen holds < 2 % of the cavity)
    # slices that can hold points 3 mm below to 25 mm above u_base, anywhere within the head's half-extents
    reach = abs(si[2]) * 30.0 + np.hypot(si[0], si[1]) * (half_w + half_ap) + 10.0
    z_mid = c[2] + si[2] * (u_base + 11.0)
    k0, k1 = int(np.searchsorted(z, z_mid - reach)), int(np.searchsorted(z, z_mid + reach)) + 1
    if k1 <= k0:
        return []
    from metrics.radiation import _box_dilate

    # every f-th pixel (~1 mm; air and bone are hundreds of HU from the thresholds: no averaging needed), within
    # the cavity's in-plane bounding box + 25 mm (the canal runs from the cavity wall to the scalp)
    f = max(1, int(round(1.0 / float(spacing[1]))))
    pts_xy = hf["pts"][:, :2]
    (x_lo, y_lo), (x_hi, y_hi) = pts_xy.min(axis=0) - 25.0, pts_xy.max(axis=0) + 25.0
    r0, r1 = max(0, int(y_lo / spacing[1])), int(np.ceil(y_hi / spacing[1])) + 1
    c0, c1 = max(0, int(x_lo / spacing[2])), int(np.ceil(x_hi / spacing[2])) + 1
    sub = np.asarray(hu)[k0:k1, r0:r1:f, c0:c1:f]
    px = float(spacing[2]) * f
    kz, ky, kx = np.nonzero((sub < AIR_HU) & _box_dilate(sub > 300.0, max(1, int(round(3.0 / px)))))
    if kz.size == 0:
        return []
    p = np.column_stack([(kx * f + c0) * float(spacing[2]), (ky * f + r0) * float(spacing[1]), z[kz + k0]]) - c
    pu, pv, pt = p @ si, p @ lr, p @ ap
    keep = (np.abs(pv) > 0.6 * half_w) & (np.abs(pt) < 0.4 * half_ap) & (pu > u_base - 3.0) & (pu < u_base + 25.0)
    vox = abs(float(z[1] - z[0])) * px * float(spacing[1]) * f if z.size > 1 else 0.0
    out = []
    slice_idx = kz + k0
    for side in (pv < 0, pv > 0):
        sel = keep & side
        if sel.sum() * vox < EAM_MIN_MM3:
            continue
        if slice_idx[sel].min() == 0 or slice_idx[sel].max() == z.size - 1:
            continue  # the scan edge cuts the canal: its centroid would be biased
        out.append(c + p[sel].mean(axis=0))
    return out


def orbitomeatal_line(hu, spacing, intracranial_mask, z_positions) -> tuple[np.ndarray, np.ndarray] | None:
    """(orbit point, meatus point), x, y, z in mm (z physical): the midpoint of the detected eye-globe centres
    (:func:`metrics.radiation.detect_eyes`; the lens centroid when the globe fit is missing) and the midpoint
    of the detected external auditory meati (:func:`detect_ear_canals`). Taking midpoints of both sides makes
    the line lie in the mid-sagittal plane, so head roll does not tilt it. None unless both eyes and both
    canals are found (one side alone would tilt the line with the head's roll)."""
    from metrics.radiation import detect_eyes

    z = np.asarray(z_positions, dtype=float)
    eyes = detect_eyes(hu, spacing, intracranial_mask, z)
    if not eyes:
        return None
    orbits = [e.globe_mm if e.globe_mm is not None else e.lens_mm for e in eyes]
    orbits = [o for o in orbits if o is not None]
    if len(orbits) != 2:
        return None
    ears = detect_ear_canals(hu, spacing, intracranial_mask, z)
    if ears is None or len(ears) != 2:
        return None
    return np.mean(orbits, axis=0), np.mean(ears, axis=0)


@register_iqm(unit="deg", direction="closer_to_target", regions=("head",), reference=OM_REF,
              formula="OM angle = atan2(z_meatus - z_orbit, |(x, y)_orbit - (x, y)_meatus|); orbit = midpoint of the "
              "eye-globe centres, meatus = midpoint of the external auditory canals (HU/geometry detection)")
def orbitomeatal_angle_deg(hu, spacing, intracranial_mask, z_positions):
    """Angle between the orbitomeatal line and the axial scan plane (the head-CT baseline): + when the orbits
    lie below the ear canals (chin down, flexion); 0 is a scan plane parallel to the OM line.

    Landmarks are found from HU and geometry (eye globes, external auditory canals); None when either is not in
    the scan. Unlike ``head_pitch_deg`` (the cranial cavity's long axis) this is the baseline radiographers
    align to, and it sets how far the orbits, hence the lenses, drop below a scan range that starts at the
    skull base."""
    line = orbitomeatal_line(hu, spacing, intracranial_mask, z_positions)
    if line is None:
        return None
    orbit, meatus = line
    d = orbit - meatus
    return float(np.degrees(np.arctan2(-d[2], np.hypot(d[0], d[1]))))


# ------------------------------------------------------------------------------------------------
# chest: arms in the field of view
# ------------------------------------------------------------------------------------------------

ARM_GAP_MM = 45.0        # humerus of a lowered arm: beyond the chest wall (ribs, scapula) lateral to the lungs
ARM_BONE_MM2 = 50.0      # humeral shaft cross-section ~ 3-4 cm2; noise specks and calcifications are far smaller
ARM_MAX_SLICES = 40
BRINK2008 = ("Brink M, de Lange F, Oostveen LJ et al. Arm raising at exposure-controlled multidetector trauma CT of "
             "thoracoabdominal region: higher image quality, lower radiation dose. Radiology 2008;249:661-670")


@register_iqm(unit="%", direction="lower_is_better", regions=("chest",), reference=BRINK2008,
              formula="100 x (chest slices with >= 0.5 cm2 of bone (> 300 HU) more than 45 mm lateral to the lungs' "
              "widest extent, within the slice's lung AP extent) / (slices with >= 3 cm2 of lung); at most 40 slices, "
              "evenly spaced")
def arms_in_field_pct(hu, lung_mask, spacing):
    """Percentage of the chest slices with an arm beside the torso (arms down) inside the field of view; 0 is
    best (arms raised out of the field).

    Lowered arms add attenuation in the lateral projections: automatic exposure control raises the dose and
    streaks cross the chest. An arm is recognised by its humerus: bone lying more than ARM_GAP_MM beyond the
    lungs' widest lateral extent (outside the ribs and scapula), within the slice's lung anterior-posterior
    extent (so that the table, behind the patient, is not counted); whether the arm touches the trunk does
    not matter. Known limitation: validated on phantoms only, whose lowered arms are straight cylinders
    beside slim trunks; a raised arm's humeral head beside the apices is not modelled."""
    lung = np.asarray(lung_mask, dtype=bool)
    px_cm2 = float(spacing[1] * spacing[2]) / 100.0
    f = max(1, int(round(2.0 / float(spacing[1]))))  # work on ~2 mm blocks: the humerus is >= 15 mm wide
    lw = lung[:, ::f, ::f]
    area = lw.sum(axis=(1, 2)) * px_cm2 * f * f
    chest = np.nonzero(area >= 3.0)[0]
    if chest.size == 0:
        return None
    chest = chest[np.unique(np.linspace(0, chest.size - 1, min(chest.size, ARM_MAX_SLICES)).round().astype(int))]
    from metrics.radiation import _block_mean

    # slice by slice: no copy of the selected slices (and the same float32 block means)
    bone = np.concatenate([_block_mean(hu[k : k + 1], f) > 300.0 for k in chest])
    lw = lw[chest][:, : bone.shape[1], : bone.shape[2]]
    cols = np.arange(bone.shape[2]) * f * float(spacing[2])
    rows = np.arange(bone.shape[1]) * f * float(spacing[1])
    any_x, any_y = lw.any(axis=1), lw.any(axis=2)
    # lateral reference: the widest extent of the lungs over the chest (towards the apices the lungs narrow
    # inside a rib cage that does not)
    lung_cols = np.nonzero(any_x.any(axis=0))[0]
    x_lo, x_hi = np.full(len(chest), cols[lung_cols[0]]), np.full(len(chest), cols[lung_cols[-1]])
    y_lo = np.where(any_y, rows[None, :], np.inf).min(axis=1)
    y_hi = np.where(any_y, rows[None, :], -np.inf).max(axis=1)
    in_ap = (rows[None, :] >= y_lo[:, None]) & (rows[None, :] <= y_hi[:, None])        # [k, y]
    left = cols[None, :] < (x_lo - ARM_GAP_MM)[:, None]                               # [k, x]
    right = cols[None, :] > (x_hi + ARM_GAP_MM)[:, None]
    b = bone & in_ap[:, :, None]
    blk_mm2 = f * f * float(spacing[1] * spacing[2])
    side_a = (b & left[:, None, :]).sum(axis=(1, 2)) * blk_mm2 >= ARM_BONE_MM2
    side_b = (b & right[:, None, :]).sum(axis=(1, 2)) * blk_mm2 >= ARM_BONE_MM2
    return float(100.0 * np.mean(side_a | side_b))
