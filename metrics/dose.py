"""Patient size and dose IQMs: water-equivalent diameter (AAPM TG-220), size-specific dose estimate
(AAPM TG-204 / TG-293), scan length and DLP, and the length scanned beyond the protocol's anatomy."""

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


# ------------------------------------------------------------------------------------------------
# over-ranging: scanned length beyond the anatomy the protocol needs
# ------------------------------------------------------------------------------------------------

#: Length (mm) scanned beyond each protocol landmark that is still counted as needed: about two 5 mm
#: slices of safety margin (head: vertex, foramen magnum; chest: lung apices, costophrenic recesses).
EXCESS_TOLERANCE_MM = {"head": (10.0, 10.0), "chest": (10.0, 10.0)}  # (above the upper landmark, below the lower)
EXCESS_REF = ("European Commission EUR 16262 (1999) anatomical coverage (head: foramen magnum to vertex; chest: lung "
              "apices to bases); ICRP Publication 102 (2007): limit the scanned range to the region of interest")


@register_iqm(unit="mm", direction="lower_is_better", reference=EXCESS_REF,
              formula="excess = max(0, upper margin - 10 mm) + max(0, lower margin - 10 mm); margins: head "
              "vertex_margin_mm, "
              "skull_base_margin_mm; chest lung_apex_margin_mm, lung_base_margin_mm (metrics.coverage)")
def excess_scan_length_mm(body_mask, intracranial_mask, lung_mask, spacing, z_positions, region):
    """Scanned length beyond what the protocol needs (dose spent on no required anatomy): the part of the range
    more than 10 mm above the vertex and below the foramen magnum (head), or above the lung apices and below
    the costophrenic recesses (chest).

    Built on the coverage margins, so it is as exact as they are; a cut landmark contributes 0 on its side.
    None when neither margin can be measured."""
    from metrics import coverage as C

    if region == "head":
        upper = C.vertex_margin_mm(body_mask, spacing, z_positions)
        lower = C.skull_base_margin_mm(intracranial_mask, spacing, z_positions)
    elif region == "chest":  # as lung_apex_margin_mm / lung_base_margin_mm, from one area profile
        z = np.asarray(z_positions, dtype=float)
        if z.size < 3:
            return None
        area = C._area_profile(lung_mask, spacing) / 100.0
        lo, hi, _dz = C._edges(z)
        apex, base = C.lung_end_z(area, z, "apex"), C.lung_end_z(area, z, "base")
        upper = None if apex is None else max(hi - apex, 0.0)
        lower = None if base is None else max(base - lo, 0.0)
    else:
        return None
    if upper is None and lower is None:
        return None
    tol_up, tol_low = EXCESS_TOLERANCE_MM[region]
    return float(max(0.0, (upper or 0.0) - tol_up) + max(0.0, (lower or 0.0) - tol_low))
