"""Spatial-resolution IQMs measured on the patient: the air-skin edge spread function.

The body outline is a high-contrast (~1000 HU) edge present in every scan. Like the circular-edge method of
task-based CT resolution measurement (Richard, Husarik, Yadava, Murphy & Samei, Med Phys 2012;39:4115), the
edge profiles of many angles are aligned and averaged into an over-sampled edge spread function (ESF); its
derivative is the line spread function (LSF) and |FFT(LSF)| the modulation transfer function (MTF), from
which f50 (MTF = 0.5) is read (Sanders, Hurwitz & Samei, Med Phys 2016;43:4400 measure it on the patient's
air-skin interface the same way).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from metrics.registry import register_iqm

EDGE_HALF_WIDTH_MM = 5.0
TISSUE_LEVEL_MM = (1.5, 3.0)  # depth range inside the edge for the tissue level (scalp: ~5 mm over bone)
N_ANGLES = 360
MAX_SLICES = 6
MIN_CONTRAST_HU = 400.0

SAMEI_REF = ("Richard S, Husarik DB, Yadava G, Murphy SN, Samei E. Towards task-based assessment of CT performance. "
             "Med Phys 2012;39:4115 (circular-edge MTF); Sanders J, Hurwitz L, Samei E. Patient-specific "
             "quantification of image quality: an automated method for measuring spatial resolution in clinical CT "
             "images. Med Phys 2016;43:5330 (MTF on the air-skin edge)")


def _edge_slices(body_mask: np.ndarray, n: int) -> np.ndarray:
    from metrics.perceptual import slice_areas

    area = slice_areas(body_mask)
    if area.max() == 0:
        return np.zeros(0, dtype=int)
    zs = np.nonzero(area >= 0.3 * area.max())[0]
    return zs if zs.size <= n else zs[np.linspace(0, zs.size - 1, n + 2)[1:-1].round().astype(int)]


def edge_samples(img: np.ndarray, body: np.ndarray, pixel_mm: float, half_width_mm: float = EDGE_HALF_WIDTH_MM,
                 n_angles: int = N_ANGLES) -> tuple[np.ndarray, np.ndarray]:
    """Signed distances (mm, + outward) of the pixel centres near the body outline of one slice to the edge, and
    their values normalised per ray to 0 (air) .. 1 (tissue).

    Rays from the body centroid at ``n_angles`` angles; along each, the outermost body-mask boundary gives
    a rough edge radius; the ray is sampled (bilinear, 0.25 px) over +-half-width around it; the tissue level
    is the mean 1.5-3 mm inside, the air level the mean 1.5 mm..half-width outside, and the edge point is the
    50 % crossing.
    Rays are kept when the contrast exceeds 400 HU, both plateaus are flat (SD < 15 % of the contrast) and
    the edge point agrees within 1 px with its neighbours (5-ray moving mean: no arm gap or table contact);
    the edge curve is that moving mean. Every pixel centre within the half-width of a kept edge point, nearest
    to that ray by angle, contributes its distance along the local edge normal (the tangent from the
    neighbouring edge points); rays more than 35 degrees oblique to the normal are dropped."""
    rows = np.nonzero(body.any(axis=1))[0]
    cols = np.nonzero(body.any(axis=0))[0]
    if rows.size < 10 or cols.size < 10:
        return np.zeros(0), np.zeros(0)
    # work in the body's bounding box (+2 px) for the mask operations
    y0, x0 = max(rows[0] - 2, 0), max(cols[0] - 2, 0)
    sub = body[y0 : rows[-1] + 3, x0 : cols[-1] + 3]
    ys, xs = np.nonzero(sub)
    if ys.size < 100:
        return np.zeros(0), np.zeros(0)
    cy, cx = ys.mean() + y0, xs.mean() + x0
    theta = np.arange(n_angles) * (2 * np.pi / n_angles)
    ct, st = np.cos(theta), np.sin(theta)
    # rough edge: outermost boundary pixel of the mask per angle bin
    edge = sub & ~ndi.binary_erosion(sub)
    by, bx = np.nonzero(edge)
    by, bx = by + y0, bx + x0
    ang = np.mod(np.arctan2(by - cy, bx - cx), 2 * np.pi)
    j = np.rint(ang / (2 * np.pi / n_angles)).astype(int) % n_angles
    r_rough = np.zeros(n_angles)
    np.maximum.at(r_rough, j, np.hypot(by - cy, bx - cx))
    hw = half_width_mm / pixel_mm  # px
    steps = np.arange(-hw - 2.0, hw + 2.0 + 1e-9, 0.25)
    rr = r_rough[:, None] + steps[None, :]
    coords = np.stack([cy + rr * st[:, None], cx + rr * ct[:, None]])
    prof = ndi.map_coordinates(img, coords.reshape(2, -1), order=1, mode="nearest").reshape(rr.shape)
    ray = np.arange(n_angles)

    def outer_crossing(level):
        """Position (px, along steps) of the outermost downward crossing of ``level`` [n_angles] per ray."""
        above = prof >= level[:, None]
        cross = above[:, :-1] & ~above[:, 1:]
        found = cross.any(axis=1)
        i = np.clip(cross.shape[1] - 1 - np.argmax(cross[:, ::-1], axis=1), 0, len(steps) - 2)
        p0, p1 = prof[ray, i], prof[ray, i + 1]
        frac = np.clip(np.where(p0 != p1, (p0 - level) / np.where(p0 != p1, p0 - p1, 1.0), 0.5), 0, 1)
        return steps[i] + 0.25 * frac, found

    # levels relative to a first crossing at -500 HU (the mask's pixel-quantised edge is too coarse)
    x1, found = outer_crossing(np.full(n_angles, -500.0))
    rel = steps[None, :] - x1[:, None]
    inner = (rel >= -TISSUE_LEVEL_MM[1] / pixel_mm) & (rel <= -TISSUE_LEVEL_MM[0] / pixel_mm)
    outer = (rel <= hw) & (rel >= 1.5 / pixel_mm)

    def masked_stats(m):
        cnt = np.maximum(m.sum(axis=1), 1)
        mean = (prof * m).sum(axis=1) / cnt
        sd = np.sqrt(np.clip((prof**2 * m).sum(axis=1) / cnt - mean**2, 0, None))
        return mean, sd, m.sum(axis=1)

    tissue, sd_t, n_t = masked_stats(inner)
    air, sd_a, n_a = masked_stats(outer)
    contrast = tissue - air
    ok = found & (r_rough > 0) & (n_t >= 3) & (n_a >= 3) & (contrast > MIN_CONTRAST_HU)
    ok &= (sd_t < 0.15 * np.abs(contrast)) & (sd_a < 0.15 * np.abs(contrast))
    # 50 % crossing between the two levels
    x50, found50 = outer_crossing(0.5 * (tissue + air))
    ok &= found50
    r_edge = r_rough + x50
    # smooth the edge curve over 5 neighbouring rays (valid ones), drop rays off the curve
    w = ok.astype(float)
    kern = np.ones(5)
    num = ndi.convolve1d(np.where(ok, r_edge, 0.0), kern, mode="wrap")
    den = ndi.convolve1d(w, kern, mode="wrap")
    r_s = np.where(den >= 3, num / np.maximum(den, 1), np.nan)
    ok &= np.isfinite(r_s) & (np.abs(r_edge - np.nan_to_num(r_s)) < 1.0)
    # edge points, tangents and outward normals (x, y)
    px, py = cx + r_s * ct, cy + r_s * st
    tx, ty = np.roll(px, -1) - np.roll(px, 1), np.roll(py, -1) - np.roll(py, 1)
    tn = np.hypot(tx, ty)
    nx, ny = ty / tn, -tx / tn
    sgn = np.sign(nx * ct + ny * st)
    nx, ny = nx * sgn, ny * sgn
    cos_phi = nx * ct + ny * st
    ok &= np.isfinite(cos_phi) & (cos_phi > np.cos(np.radians(35.0))) & np.roll(ok, 1) & np.roll(ok, -1)
    if ok.sum() < 20:
        return np.zeros(0), np.zeros(0)
    # candidate pixels: squares of half-size hw + 1 around the kept edge points
    h = int(np.ceil(hw)) + 1
    oy, ox = np.mgrid[-h : h + 1, -h : h + 1]
    kept = np.nonzero(ok)[0]
    cand_y = (np.rint(py[kept])[:, None] + oy.ravel()[None]).astype(int).ravel()
    cand_x = (np.rint(px[kept])[:, None] + ox.ravel()[None]).astype(int).ravel()
    inside = (cand_y >= 0) & (cand_y < img.shape[0]) & (cand_x >= 0) & (cand_x < img.shape[1])
    mark = np.zeros(img.shape, dtype=bool)
    mark[cand_y[inside], cand_x[inside]] = True
    qy, qx = np.nonzero(mark)
    jq = np.rint(np.mod(np.arctan2(qy - cy, qx - cx), 2 * np.pi) / (2 * np.pi / n_angles)).astype(int) % n_angles
    sel = ok[jq]
    qy, qx, jq = qy[sel], qx[sel], jq[sel]
    d = (qx - px[jq]) * nx[jq] + (qy - py[jq]) * ny[jq]
    keep = np.abs(d) <= hw
    qy, qx, jq, d = qy[keep], qx[keep], jq[keep], d[keep]
    val = (img[qy, qx] - air[jq]) / contrast[jq]
    return d * pixel_mm, val


def mtf_from_edge(d_mm: np.ndarray, values: np.ndarray, pixel_mm: float,
                  half_width_mm: float = EDGE_HALF_WIDTH_MM) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in cycles/mm, MTF) from edge samples: ESF = mean value in bins of pixel/10, empty bins
    interpolated; LSF = -dESF/dd times a Tukey window (flat over the inner half, cosine taper to 0 at
    +-half-width: suppresses the noise of the tails and the scalp-bone edge ~5 mm inside without narrowing an
    LSF of sigma <= 1.2 mm); MTF = |FFT(LSF)| / FFT(LSF)(0), zero-padded to 4096 bins."""
    dx = pixel_mm / 10.0
    nb = int(np.ceil(2 * half_width_mm / dx))
    b = np.clip(((d_mm + half_width_mm) / dx).astype(int), 0, nb - 1)
    cnt = np.bincount(b, minlength=nb)
    s = np.bincount(b, weights=values, minlength=nb)
    centers = -half_width_mm + (np.arange(nb) + 0.5) * dx
    have = cnt > 0
    esf = np.interp(centers, centers[have], s[have] / cnt[have])
    lsf = -np.gradient(esf, dx)
    a = np.clip((np.abs(centers) - 0.5 * half_width_mm) / (0.5 * half_width_mm), 0, 1)
    lsf *= 0.5 * (1 + np.cos(np.pi * a))
    n = max(4096, nb)
    mtf = np.abs(np.fft.rfft(lsf, n=n))
    return np.fft.rfftfreq(n, d=dx), mtf / mtf[0]


def f50_from_mtf(freq: np.ndarray, mtf: np.ndarray, f_max: float) -> float | None:
    """First frequency (linear interpolation) where the MTF falls to 0.5, if below f_max."""
    below = np.nonzero(mtf < 0.5)[0]
    if below.size == 0 or below[0] == 0 or freq[below[0]] > f_max:
        return None
    i = below[0]
    return float(freq[i - 1] + (mtf[i - 1] - 0.5) / (mtf[i - 1] - mtf[i]) * (freq[i] - freq[i - 1]))


@register_iqm(
    unit="1/mm",
    direction="closer_to_target",
    formula="f50: MTF(f50) = 0.5, MTF = |FFT(-d ESF / dd)| (Tukey window +-5 mm), ESF = air-skin edge profile over "
    "360 angles on <= 6 slices, pixel centres binned at pixel/10 by their normal distance to the 50 % edge",
    reference=SAMEI_REF,
)
def edge_mtf50_per_mm(hu, spacing, body_mask):
    """Spatial resolution on the patient: the frequency (cycles/mm) at which the MTF of the air-skin edge falls
    to 50 % (higher = sharper kernel, lower = smooth kernel or motion blur). Compare against the protocol's
    kernel, not a universal target.

    On at most 6 slices evenly spaced over the slices with >= 30 % of the largest body cross-section, the edge
    samples of :func:`edge_samples` are pooled into one over-sampled ESF (the pixel sampling is included:
    this is the presampled MTF). None when fewer than 2000 edge samples are found or the MTF stays above 0.5
    up to twice the pixel Nyquist frequency."""
    zs = _edge_slices(body_mask, MAX_SLICES)
    px = float(spacing[2])
    ds, vs = [], []
    for k in zs:
        d, v = edge_samples(np.asarray(hu[k], dtype=np.float32), body_mask[k], px)  # interpolated: float, not int16
        ds.append(d)
        vs.append(v)
    if not ds or sum(len(d) for d in ds) < 2000:
        return None
    freq, mtf = mtf_from_edge(np.concatenate(ds), np.concatenate(vs), px)
    return f50_from_mtf(freq, mtf, f_max=1.0 / px)
