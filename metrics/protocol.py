"""Protocol IQMs from the DICOM header and the stored value range: display window, clipping, dose."""

from __future__ import annotations

import math

import numpy as np

from metrics.registry import register_iqm

#: Recommended display windows (centre L, width W in HU) per region.
WINDOW_PRESETS = {
    "head": {"brain": (40.0, 80.0), "posterior_fossa": (40.0, 150.0)},
    "chest": {"lung": (-600.0, 1500.0), "mediastinum": (40.0, 350.0)},
}
WINDOW_REF = ("Hoang JK et al. Using the window settings on CT: brain W80/L40 (posterior fossa W150/L40); "
              "Radiopaedia/ACR practice parameters: lung W1500/L-600, mediastinum W350/L40")


def nearest_window_preset(center: float, width: float, region: str) -> tuple[str, float, float]:
    """The region's recommended window closest to (center, width) by d = |C - L|/W + |ln(width/W)|."""
    presets = WINDOW_PRESETS.get(region, {})
    best = min(presets.items(), key=lambda kv: abs(center - kv[1][0]) / kv[1][1] + abs(math.log(width / kv[1][1])))
    return best[0], best[1][0], best[1][1]


def _window(metadata):
    c, w = (metadata or {}).get("WindowCenter"), (metadata or {}).get("WindowWidth")
    if c is None or w is None or float(w) <= 0:
        return None
    return float(c), float(w)


@register_iqm(
    unit="HU",
    direction="closer_to_target",
    formula="WC - L*, with (L*, W*) the region's recommended window nearest to the stored (WC, WW)",
    reference=WINDOW_REF,
)
def window_center_error_hu(metadata, region):
    """Stored display window centre minus the nearest recommended centre for the region (0 is best)."""
    win = _window(metadata)
    if win is None or region not in WINDOW_PRESETS:
        return None
    _name, level, _width = nearest_window_preset(win[0], win[1], region)
    return win[0] - level


@register_iqm(
    unit="%",
    direction="closer_to_target",
    formula="100 * (WW - W*) / W*, with (L*, W*) the region's recommended window nearest to the stored (WC, WW)",
    reference=WINDOW_REF,
)
def window_width_error_pct(metadata, region):
    """Stored display window width relative to the nearest recommended width for the region (0 is best)."""
    win = _window(metadata)
    if win is None or region not in WINDOW_PRESETS:
        return None
    _name, _level, width = nearest_window_preset(win[0], win[1], region)
    return 100.0 * (win[1] - width) / width


#: slices per chunk in clipped_voxel_fraction_pct (bounds its temporaries to a few MiB)
CHUNK_SLICES = 16


@register_iqm(
    unit="%",
    direction="lower_is_better",
    formula="100 * #{x in body : x = max(stored)} / #body  (+ #{x = min(stored)} when min > -900 HU, i.e. air clipped)",
    reference="DICOM PS3.3 C.11.2 (VOI LUT); an image saved already windowed loses the values outside the window "
    "(IEC 61223-3-5 CT value accuracy)",
)
def clipped_voxel_fraction_pct(hu, body_mask):
    """Percentage of body voxels sitting at the stored maximum (or at a minimum above air): values saved
    already windowed. A normal CT has well under 0.1 %."""
    # in chunks of slices, with masked reductions: no copy of the body's voxels (hu[body_mask] is a
    # full-volume temporary); the counts and extremes are exact, so the result is the same
    nz = hu.shape[0]
    chunks = [slice(i, i + CHUNK_SLICES) for i in range(0, nz, CHUNK_SLICES)]
    size = int(np.count_nonzero(body_mask))
    if size == 0:
        return None
    lo, hi = (np.iinfo(hu.dtype).min, np.iinfo(hu.dtype).max) if hu.dtype.kind in "iu" else (-np.inf, np.inf)
    vmax = max(np.max(hu[c], where=body_mask[c], initial=lo) for c in chunks)
    vmin = min(np.min(hu[c], where=body_mask[c], initial=hi) for c in chunks)
    n = sum(int(np.count_nonzero((hu[c] == vmax) & body_mask[c])) for c in chunks)
    if n <= 1:
        n = 0
    if float(vmin) > -900:
        n += sum(int(np.count_nonzero((hu[c] == vmin) & body_mask[c])) for c in chunks)
    return 100.0 * n / size


@register_iqm(
    unit="mGy",
    direction="lower_is_better",
    formula="CTDIvol from the DICOM header (0018,9345)",
    reference="EU RP 180 (2014) diagnostic reference levels: head 60 mGy, chest 10 mGy; ACR-AAPM reference "
    "levels: adult head 75 mGy, adult abdomen 25 mGy",
)
def ctdivol_mgy(metadata):
    """Volume CT dose index reported by the scanner (lower is better at equal image quality)."""
    v = (metadata or {}).get("CTDIvol")
    return None if v is None else float(v)


@register_iqm(
    unit="mAs",
    direction="lower_is_better",
    formula="Exposure (0018,1152), else XRayTubeCurrent [mA] * ExposureTime [ms] / 1000",
    reference="IEC 60601-2-44; tube current-time product per rotation as recorded in the DICOM header",
)
def tube_current_time_product_mas(metadata):
    """Tube current-time product (mAs) of the series."""
    v = (metadata or {}).get("ExposureMAs")
    return None if v is None else float(v)
