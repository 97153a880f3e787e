"""Artifact IQMs: indices that are ~0 on a clean scan and grow with the artifact."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from metrics.registry import register_iqm

METAL_HU = 2500.0


@register_iqm(unit="%", direction="lower_is_better",
              formula="100 x #slices whose body mask touches the field-of-view boundary / #slices with body",
              reference="AAPM Report 220 (2014) sec. 3 (truncated patients); Kalender, Computed Tomography 3rd ed. "
              "(truncation artifacts)")
def truncation_pct(body_mask, fov):
    """Share of slices in which the patient extends to the edge of the reconstructed field (body cut off:
    truncation artifacts, wrong WED/SSDE)."""
    has = body_mask.reshape(body_mask.shape[0], -1).any(axis=1)
    if not has.any():
        return None
    edge = fov & ~ndi.binary_erosion(fov, structure=np.ones((1, 3, 3), bool), border_value=0)
    # only the outer rim of the field counts (the reconstruction circle or the image border), not the inner
    # boundary of a resampled tilted slab: edge pixels at >= 95 % of the largest field radius
    ny, nx = fov.shape[1:]
    yy, xx = np.mgrid[:ny, :nx]
    if edge.any():
        cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
        r = np.hypot(yy - cy, xx - cx)
        r_max = float(r[fov.any(axis=0)].max())
        edge &= (r >= 0.95 * min(r_max, max(cy, cx)))[None]
    touch = (body_mask & edge).reshape(body_mask.shape[0], -1).any(axis=1)
    return float(100.0 * touch[has].mean())


@register_iqm(unit="HU", direction="lower_is_better",
              formula="max over slices and radii r (inside the body) of |median over angles of (I(r, a) - median_9r(I)(r, a))|, "
              "I = slice in polar coordinates about the image centre",
              reference="Sijbers J, Postnov A. Reduction of ring artefacts in high resolution micro-CT "
              "reconstructions. Phys Med Biol 2004;49:N247 (polar-transform ring detection)")
def ring_index_hu(hu, body_mask):
    """Ring artifact index: the strongest ring-shaped (same at all angles, sharp in radius) residual, in HU."""
    from skimage.transform import warp_polar

    zs = np.nonzero(body_mask.reshape(body_mask.shape[0], -1).any(axis=1))[0]
    if zs.size == 0:
        return None
    zs = zs[np.linspace(0, zs.size - 1, min(zs.size, 16)).round().astype(int)]
    n = min(hu.shape[1:])
    best = 0.0
    for k in zs:
        polar = warp_polar(hu[k].astype(float), radius=n // 2 - 1, output_shape=(360, n // 2 - 1))
        bpolar = warp_polar(body_mask[k].astype(float), radius=n // 2 - 1, output_shape=(360, n // 2 - 1)) > 0.5
        # radial high-pass per angle, then the median over angles: a ring is the same at every angle,
        # an anatomical edge sits at a different radius at each angle and drops out of the median
        hp = np.abs(np.median(polar - ndi.median_filter(polar, size=(1, 9)), axis=0))
        inside = bpolar.mean(axis=0) > 0.5
        hp[:3] = 0
        if inside.any():
            best = max(best, float(hp[inside].max()))
    return best


@register_iqm(unit="HU", direction="lower_is_better",
              formula="MAI = sqrt(max(SD_art^2 - SD_ref^2, 0)); SD_art = SD of soft tissue (-100..200 HU) 5-40 mm from "
              "metal (> 2500 HU) in the metal slices, SD_ref = global noise index; 0 without metal",
              reference="Kidoh M et al., Br J Radiol 2014 (metal artifact index); Wellenberg RHH et al., Eur J Radiol 2018")
def metal_artifact_index_hu(hu, spacing, body_mask):
    """Excess noise around metal (streaks), in HU."""
    from metrics.noise import global_noise_index_hu

    metal = (hu > METAL_HU) & body_mask
    if metal.sum() < 3:
        return 0.0
    zs = np.nonzero(metal.reshape(metal.shape[0], -1).any(axis=1))[0]
    ref = global_noise_index_hu(hu, spacing, body_mask) or 0.0
    sd = []
    for k in zs:
        d = ndi.distance_transform_edt(~metal[k], sampling=spacing[1:])
        ring = (d >= 5) & (d <= 40) & body_mask[k] & (hu[k] > -100) & (hu[k] < 200)
        if ring.sum() > 50:
            sd.append(float(hu[k][ring].std()))
    if not sd:
        return 0.0
    return float(np.sqrt(max(np.mean(sd) ** 2 - ref**2, 0.0)))
