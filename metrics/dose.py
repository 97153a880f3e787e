"""Patient size and dose IQMs: water-equivalent diameter (AAPM TG-220), size-specific dose estimate
(AAPM TG-204 / TG-293), scan length and DLP."""

from __future__ import annotations

import math

import numpy as np

from metrics.registry import register_iqm

TG220 = ("AAPM Report 220 (2014), Use of water equivalent diameter for calculating patient size and SSDE in CT: "
         "D_w = 2 sqrt((mean(HU)/1000 + 1) A / pi)")
TG204 = ("AAPM Report 204 (2011), Size-specific dose estimates (32 cm phantom: f = 3.704369 exp(-0.03671937 D_w[cm])); "
         "AAPM Report 293 (2019) for head (16 cm phantom: f = 1.9852 exp(-0.0486 D_w[cm]))")


def wed_per_slice(hu: np.ndarray, body_mask: np.ndarray, spacing) -> np.ndarray:
    """D_w per slice (mm): 2 sqrt((mean HU in the body / 1000 + 1) * area / pi); 0 where the slice has no body."""
    px_area = float(spacing[1] * spacing[2])
    out = np.zeros(hu.shape[0])
    for k in range(hu.shape[0]):
        m = body_mask[k]
        n = int(m.sum())
        if n:
            out[k] = 2.0 * math.sqrt(max(float(hu[k][m].mean()) / 1000.0 + 1.0, 0.0) * n * px_area / math.pi)
    return out


@register_iqm(unit="mm", direction="closer_to_target", reference=TG220,
              formula="mean over slices with body of D_w = 2 sqrt((mean(HU_body)/1000 + 1) A_body / pi)")
def water_equivalent_diameter_mm(hu, body_mask, spacing):
    """Patient size as the diameter of a water cylinder with the same X-ray attenuation, averaged over the
    scanned slices. Not good or bad in itself: it sets the expected noise and the SSDE conversion."""
    w = wed_per_slice(hu, body_mask, spacing)
    return float(w[w > 0].mean()) if (w > 0).any() else None


def ssde_factor(wed_mm: float, region: str) -> float:
    """TG-204 (body, 32 cm CTDI phantom) or TG-293 (head, 16 cm phantom) conversion factor."""
    d_cm = wed_mm / 10.0
    if region == "head":
        return 1.9852 * math.exp(-0.0486 * d_cm)
    return 3.704369 * math.exp(-0.03671937 * d_cm)


@register_iqm(unit="mGy", direction="lower_is_better", reference=TG204,
              formula="SSDE = CTDIvol x f(D_w); f from TG-204 (chest, 32 cm phantom) or TG-293 (head, 16 cm phantom)")
def ssde_mgy(hu, body_mask, spacing, metadata, region):
    """Size-specific dose estimate: the scanner's CTDIvol corrected for this patient's size."""
    ctdi = (metadata or {}).get("CTDIvol")
    if ctdi is None:
        return None
    wed = water_equivalent_diameter_mm(hu, body_mask, spacing)
    return None if wed is None else float(ctdi) * ssde_factor(wed, region)


@register_iqm(unit="mm", direction="lower_is_better", reference="IEC 60601-2-44 (irradiated length); DLP = CTDIvol x L",
              formula="L = z_last - z_first + slice spacing (reconstructed range)")
def scan_length_mm(z_positions):
    """Reconstructed scan length (edge to edge of the first and last slice)."""
    z = np.asarray(z_positions, dtype=float)
    if z.size < 2:
        return None
    return float(abs(z[-1] - z[0]) + abs(np.median(np.diff(z))))


@register_iqm(unit="mGy*cm", direction="lower_is_better", reference="EU RP 180 (2014) DLP reference levels; DLP = CTDIvol x L",
              formula="DLP = CTDIvol x L / 10 (L in mm); from the header DLP tag when present")
def dlp_mgy_cm(metadata, z_positions):
    """Dose-length product of the reconstructed range (an under-estimate of the irradiated DLP: no over-ranging)."""
    ctdi = (metadata or {}).get("CTDIvol")
    length = scan_length_mm(z_positions)
    if ctdi is None or length is None:
        return None
    return float(ctdi) * length / 10.0
