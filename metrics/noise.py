"""Noise IQMs."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from metrics.registry import register_iqm

CHRISTIANSON2015 = ("Christianson O, Winslow J, Frush DP, Samei E. Automated technique to measure noise in "
                    "clinical CT examinations. AJR 2015;205:W93-W99 (global noise index)")


def local_sd_map(hu: np.ndarray, spacing, kernel_mm: float = 6.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-slice local mean and standard deviation (HU) in a square kernel of ``kernel_mm`` (odd pixels).

    SD uses the unbiased (n - 1) normalisation: sqrt(n/(n-1) * (E[x^2] - E[x]^2)). The kernel is at least
    9 x 9 pixels: a local SD misses the noise power at spatial frequencies below ~1/kernel, and FBP noise
    (ramp x apodisation NPS) is correlated over a few pixels; on the phantom (image and projection modes)
    5 px read 8-10 % low, 7 px 2-4 %, 9 px under 2 %."""
    k = max(9, int(round(kernel_mm / spacing[2])) | 1)
    x = hu.astype(np.float64)
    size = (1, k, k)
    mean = ndi.uniform_filter(x, size=size, mode="nearest")
    mean2 = ndi.uniform_filter(x * x, size=size, mode="nearest")
    n = k * k
    var = np.clip(mean2 - mean * mean, 0, None) * n / (n - 1)
    return mean, np.sqrt(var), k


def nps_mean_frequency(noise: np.ndarray, pixel_mm: float, n: int = 64) -> float:
    """Radial mean frequency (1/mm) of the 2-D noise power spectrum of central n x n ROIs of a noise-only
    volume [z, y, x] (mean removed per ROI): f_mean = sum(f NPS(f)) / sum(NPS(f)) (ICRU Report 87, 2012)."""
    c = noise.shape[1] // 2
    rois = noise[:, c - n // 2 : c + n // 2, c - n // 2 : c + n // 2]
    rois = rois - rois.mean(axis=(1, 2), keepdims=True)
    nps = (np.abs(np.fft.fft2(rois)) ** 2).mean(axis=0)
    f = np.fft.fftfreq(n, d=pixel_mm)
    radial = np.hypot(f[:, None], f[None, :])
    return float((radial * nps).sum() / nps.sum())


def histogram_mode(values: np.ndarray, bin_hu: float = 0.2) -> float:
    """Mode of a distribution: histogram with ``bin_hu`` bins up to the 99th percentile, smoothed with a
    Gaussian of 2 bins, arg-max."""
    hi = float(np.percentile(values, 99)) + bin_hu
    bins = max(int(hi / bin_hu), 10)
    hist, edges = np.histogram(values, bins=bins, range=(0.0, hi))
    hist = ndi.gaussian_filter1d(hist.astype(float), 2.0)
    i = int(np.argmax(hist))
    return float(0.5 * (edges[i] + edges[i + 1]))


@register_iqm(
    unit="HU",
    direction="lower_is_better",
    formula="GNI = mode{ SD_k(x) : x in soft tissue }, soft tissue = voxels whose whole kernel has local mean "
    "in 0-100 HU inside the body; SD_k = local standard deviation in a square kernel of max(6 mm, 9 px)",
    reference=CHRISTIANSON2015,
)
def global_noise_index_hu(hu, spacing, body_mask):
    """Global noise index: the most frequent local noise SD over the patient's soft tissue.

    Deviations from Christianson et al., documented: the kernel is at least 9 pixels wide (see
    :func:`local_sd_map`), and the soft-tissue mask is taken on the local mean rather than on raw voxel values, so at high noise the mask does not truncate the noise
    distribution (raw 0-100 HU thresholds bias the SD low once SD approaches 30 HU). At most 48 slices,
    evenly spaced over the body, are used."""
    zs = np.nonzero(body_mask.reshape(body_mask.shape[0], -1).any(axis=1))[0]
    if zs.size == 0:
        return None
    if zs.size > 48:
        zs = zs[np.linspace(0, zs.size - 1, 48).round().astype(int)]
    vol = hu[zs]
    mean, sd, k = local_sd_map(vol, spacing)
    soft = (mean >= 0) & (mean <= 100) & body_mask[zs]
    # whole kernel inside soft tissue
    soft = ndi.binary_erosion(soft, structure=np.ones((1, k, k), bool))
    if soft.sum() < 200:
        return None
    return histogram_mode(sd[soft])


@register_iqm(
    unit="HU",
    direction="lower_is_better",
    formula="mode{ SD_k(x) : x in air >= 10 mm outside the body, inside the field of view }",
    reference=CHRISTIANSON2015 + "; MRIQC-style background noise (Mortamet et al. 2009)",
)
def air_noise_sd_hu(hu, spacing, body_mask, fov):
    """Noise in the air around the patient (mode of the local SD). Truncated when the scanner clamps at
    -1024 HU and the noise exceeds ~10 HU; streaks from the table or metal raise it."""
    from scipy import ndimage as ndi

    zs = np.nonzero(body_mask.reshape(body_mask.shape[0], -1).any(axis=1))[0]
    if zs.size == 0:
        return None
    if zs.size > 24:
        zs = zs[np.linspace(0, zs.size - 1, 24).round().astype(int)]
    r = max(1, int(round(10.0 / spacing[2])))
    air = np.zeros((zs.size,) + body_mask.shape[1:], dtype=bool)
    for i, k in enumerate(zs):
        near = ndi.binary_dilation(body_mask[k], iterations=r)
        inside = ndi.binary_erosion(fov[k], iterations=r)
        air[i] = inside & ~near & (hu[k] < -800)
    mean, sd, k = local_sd_map(hu[zs], spacing)
    air = ndi.binary_erosion(air, structure=np.ones((1, k, k), bool))
    if air.sum() < 200:
        return None
    return histogram_mode(sd[air])


def grey_white_classes(hu: np.ndarray, intracranial_mask: np.ndarray, spacing):
    """Grey/white matter split inside the cranial cavity: brain voxels (15-55 HU after 1.5 mm in-plane Gaussian
    smoothing, cavity eroded 3 mm) split by a 2-class Gaussian mixture (scikit-learn) on the smoothed values.
    Returns (gm, wm) boolean masks eroded by 1 px to avoid partial volume, or None."""
    from scipy import ndimage as ndi
    from sklearn.mixture import GaussianMixture

    sig = 1.5 / spacing[2]
    smooth = ndi.gaussian_filter(hu, sigma=(0, sig, sig))
    r = max(1, int(round(3.0 / spacing[2])))
    brain = ndi.binary_erosion(intracranial_mask, structure=np.ones((1, 2 * r + 1, 2 * r + 1), bool))
    brain &= (smooth > 15) & (smooth < 55)
    if brain.sum() < 2000:
        return None
    vals = smooth[brain]
    sample = vals[:: max(1, vals.size // 200_000)].reshape(-1, 1)
    gmm = GaussianMixture(2, random_state=0).fit(sample)
    hi = int(np.argmax(gmm.means_.ravel()))
    lab = gmm.predict(vals.reshape(-1, 1)) == hi
    gm = np.zeros_like(brain)
    wm = np.zeros_like(brain)
    gm[brain] = lab
    wm[brain] = ~lab
    st = np.ones((1, 3, 3), bool)
    return ndi.binary_erosion(gm, structure=st), ndi.binary_erosion(wm, structure=st)


@register_iqm(
    unit="1",
    direction="higher_is_better",
    formula="CNR = (mean_GM - mean_WM) / SD_WM, GM/WM from a 2-class Gaussian mixture of smoothed brain HU; "
    "SD_WM = mode of the local SD over white matter (kernel as the global noise index)",
    reference="Bushberg et al., Essential Physics of Medical Imaging, 3rd ed. (CNR); ACR CT accreditation "
    "low-contrast criteria; Christianson 2015 (local SD)",
    regions=("head",),
)
def cnr_gm_wm(hu, spacing, intracranial_mask):
    """Grey-white matter contrast-to-noise ratio (brain differentiation)."""
    classes = grey_white_classes(hu, intracranial_mask, spacing)
    if classes is None:
        return None
    gm, wm = classes
    if gm.sum() < 200 or wm.sum() < 200:
        return None
    mean, sd, k = local_sd_map(hu, spacing)
    core = wm & (np.abs(mean - hu[wm].mean()) < 10)
    noise = histogram_mode(sd[core]) if core.sum() > 200 else float(hu[wm].std())
    return float((hu[gm].mean() - hu[wm].mean()) / noise) if noise > 0 else None


def noise_rois(hu: np.ndarray, body_mask: np.ndarray, spacing, n: int = 32, max_rois: int = 24):
    """Noise-only ROIs (n x n px) from the most uniform soft-tissue areas: candidate windows on a grid of
    n/2 inside soft tissue (0-100 HU local mean), ranked by the SD of the 3-px-smoothed image (anatomy, not
    noise); each kept ROI has a fitted quadratic surface removed."""
    from scipy import ndimage as ndi

    zs = np.nonzero(body_mask.reshape(body_mask.shape[0], -1).any(axis=1))[0]
    if zs.size == 0:
        return np.zeros((0, n, n))
    zs = zs[np.linspace(0, zs.size - 1, min(zs.size, 12)).round().astype(int)]
    cands = []
    yy, xx = np.mgrid[:n, :n] / n
    design = np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], axis=-1).reshape(-1, 6)
    for k in zs:
        smooth = ndi.gaussian_filter(hu[k], 3)
        soft = body_mask[k] & (smooth > 0) & (smooth < 100)
        for y0 in range(0, hu.shape[1] - n, n // 2):
            for x0 in range(0, hu.shape[2] - n, n // 2):
                if soft[y0 : y0 + n, x0 : x0 + n].all():
                    cands.append((float(smooth[y0 : y0 + n, x0 : x0 + n].std()), k, y0, x0))
    cands.sort()
    rois = []
    for _s, k, y0, x0 in cands[:max_rois]:
        roi = hu[k, y0 : y0 + n, x0 : x0 + n].astype(float).ravel()
        coef, *_ = np.linalg.lstsq(design, roi, rcond=None)
        rois.append((roi - design @ coef).reshape(n, n))
    return np.array(rois)


@register_iqm(
    unit="1/mm",
    direction="closer_to_target",
    formula="f_mean = sum(f NPS(f)) / sum(NPS(f)), NPS = mean |FFT|^2 of detrended uniform soft-tissue ROIs",
    reference="ICRU Report 87 (2012); Solomon, Christianson & Samei, Med Phys 2012 (NPS in clinical images)",
)
def nps_mean_frequency_per_mm(hu, spacing, body_mask):
    """Mean spatial frequency of the noise power spectrum: the noise texture (low = smooth/blotchy kernel,
    high = sharp kernel). Compare against the protocol's kernel, not a universal target."""
    rois = noise_rois(hu, body_mask, spacing)
    if len(rois) < 4:
        return None
    n = rois.shape[1]
    nps = (np.abs(np.fft.fft2(rois)) ** 2).mean(axis=0)
    f = np.fft.fftfreq(n, d=spacing[2])
    radial = np.hypot(f[:, None], f[None, :])
    return float((radial * nps).sum() / nps.sum())


# ------------------------------------------------------------------ noise in anatomical ROIs
ROI_REF = ("AAPM Report 233 (2019) sec. 4 (noise in homogeneous ROIs); ROI placement after the Chest CT-IQA and "
           "head-CT QC literature: white matter of the centrum semiovale, posterior fossa, subcutaneous fat, "
           "paraspinal muscle")


ROI_SMOOTH_MM = 3.0


def roi_noise(hu, spacing, roi: np.ndarray) -> float | None:
    """Mode of the local SD (kernel as :func:`local_sd_map`) over an ROI whose whole kernel lies inside it."""
    from scipy import ndimage as ndi

    zs = np.nonzero(roi.reshape(roi.shape[0], -1).any(axis=1))[0]
    if zs.size == 0:
        return None
    if zs.size > 24:
        zs = zs[np.linspace(0, zs.size - 1, 24).round().astype(int)]
    _mean, sd, k = local_sd_map(hu[zs], spacing)
    core = ndi.binary_erosion(roi[zs], structure=np.ones((1, k, k), bool))
    if core.sum() < 100:
        return None
    return histogram_mode(sd[core])


def _cavity_z_fraction(intracranial_mask) -> np.ndarray:
    """Per slice, the relative height (0 = lowest, 1 = highest slice of the cranial cavity); -1 outside."""
    area = intracranial_mask.reshape(intracranial_mask.shape[0], -1).sum(axis=1)
    ks = np.nonzero(area > 0.05 * area.max())[0] if area.max() > 0 else np.array([], int)
    frac = np.full(len(area), -1.0)
    if ks.size >= 2:
        frac[ks[0] : ks[-1] + 1] = (np.arange(ks[0], ks[-1] + 1) - ks[0]) / (ks[-1] - ks[0])
    return frac


def white_matter_roi(hu, spacing, intracranial_mask):
    """White matter (Gaussian-mixture class) at 30-75 % of the cranial cavity height (centrum semiovale)."""
    classes = grey_white_classes(hu, intracranial_mask, spacing)
    if classes is None:
        return None
    frac = _cavity_z_fraction(intracranial_mask)
    return classes[1] & ((frac >= 0.30) & (frac <= 0.75))[:, None, None]


def posterior_fossa_roi(hu, spacing, intracranial_mask):
    """Brain tissue (15-55 HU, 3 mm-smoothed) in the lowest 25 % of the cavity height, posterior half."""
    from scipy import ndimage as ndi

    frac = _cavity_z_fraction(intracranial_mask)
    low = ((frac >= 0.0) & (frac <= 0.25))[:, None, None]
    yy = np.nonzero(intracranial_mask)[1]
    if yy.size == 0:
        return None
    posterior = (np.arange(hu.shape[1]) > float(np.median(yy)))[None, :, None]
    sig = ROI_SMOOTH_MM / spacing[2]
    smooth = ndi.gaussian_filter(hu, sigma=(0, sig, sig))
    return intracranial_mask & low & posterior & (smooth > 15) & (smooth < 55)


def _sample_slices(body_mask, n: int = 24) -> np.ndarray:
    """At most n slice indices, evenly spaced over the slices that contain the body (ROIs need no more)."""
    zs = np.nonzero(body_mask.reshape(body_mask.shape[0], -1).any(axis=1))[0]
    return zs if zs.size <= n else zs[np.linspace(0, zs.size - 1, n).round().astype(int)]


def subcutaneous_fat_roi(hu, spacing, body_mask):
    """Fat (1.5 mm-smoothed -150..-50 HU) 3 px to 40 mm deep to the body surface, eroded by 2 px (edges blurred
    by the kernel), on at most 24 slices."""
    from scipy import ndimage as ndi

    sig = 1.5 / spacing[2]
    roi = np.zeros(hu.shape, dtype=bool)
    for k in _sample_slices(body_mask):
        smooth = ndi.gaussian_filter(hu[k], sigma=sig)
        depth = ndi.distance_transform_edt(body_mask[k], sampling=spacing[1:])
        band = body_mask[k] & (depth > 3 * spacing[2]) & (depth <= 40) & (smooth > -150) & (smooth < -50)
        roi[k] = ndi.binary_erosion(band, structure=np.ones((5, 5), bool))
    return roi


def paraspinal_muscle_roi(hu, spacing, body_mask):
    """Muscle (3 mm-smoothed 20-80 HU) 5-60 mm from the vertebral body (the largest bone component near the
    posterior midline), posterior to its centre."""
    from scipy import ndimage as ndi

    sig = ROI_SMOOTH_MM / spacing[2]
    roi = np.zeros(hu.shape, dtype=bool)
    smooth = np.zeros(hu.shape, dtype=np.float32)
    for k in _sample_slices(body_mask):
        smooth[k] = ndi.gaussian_filter(hu[k], sigma=sig)
        ys, xs = np.nonzero(body_mask[k])
        x_mid = 0.5 * (xs.min() + xs.max())
        lab, n = ndi.label((smooth[k] > 150) & body_mask[k])
        best, best_size = None, 0
        for j, sl in enumerate(ndi.find_objects(lab), start=1):
            cy, cx = (sl[0].start + sl[0].stop) / 2, (sl[1].start + sl[1].stop) / 2
            size = int((lab[sl] == j).sum())
            if abs(cx - x_mid) * spacing[2] < 25 and cy > ys.mean() and size * spacing[1] * spacing[2] > 200 and size > best_size:
                best, best_size = j, size
        if best is None:
            continue
        d = ndi.distance_transform_edt(lab != best, sampling=spacing[1:])
        roi[k] = (d >= 5) & (d <= 60) & body_mask[k] & (smooth[k] > 20) & (smooth[k] < 80)
        roi[k, : int(np.nonzero(lab == best)[0].mean()), :] = False
    return roi


@register_iqm(unit="HU", direction="lower_is_better", regions=("head",), reference=ROI_REF,
              formula="mode of local SD over white matter (Gaussian-mixture class) at 30-75 % of the cranial cavity "
              "height (centrum semiovale level)")
def noise_sd_white_matter_hu(hu, spacing, intracranial_mask):
    """Noise in the cerebral white matter (centrum semiovale)."""
    roi = white_matter_roi(hu, spacing, intracranial_mask)
    return None if roi is None else roi_noise(hu, spacing, roi)


@register_iqm(unit="HU", direction="lower_is_better", regions=("head",), reference=ROI_REF,
              formula="mode of local SD over brain tissue (15-55 HU, 3 mm-smoothed) in the lowest 25 % of the cranial "
              "cavity height and its posterior half")
def noise_sd_posterior_fossa_hu(hu, spacing, intracranial_mask):
    """Noise in the posterior fossa (cerebellum), where beam hardening and streaks concentrate."""
    roi = posterior_fossa_roi(hu, spacing, intracranial_mask)
    return None if roi is None else roi_noise(hu, spacing, roi)


@register_iqm(unit="HU", direction="lower_is_better", regions=("chest",), reference=ROI_REF,
              formula="SD of HU over subcutaneous fat (1.5 mm-smoothed -150..-50 HU 3 px to 40 mm deep, "
              "eroded 2 px); a plain ROI SD because the fat layer is often thinner than the local-SD kernel")
def noise_sd_subcutaneous_fat_hu(hu, spacing, body_mask):
    """Noise in the subcutaneous fat."""
    roi = subcutaneous_fat_roi(hu, spacing, body_mask)
    return float(hu[roi].std()) if roi.sum() >= 200 else None


@register_iqm(unit="HU", direction="lower_is_better", regions=("chest",), reference=ROI_REF,
              formula="mode of local SD over muscle (3 mm-smoothed 20-80 HU) 5-60 mm posterior/lateral of the "
              "vertebral body")
def noise_sd_paraspinal_muscle_hu(hu, spacing, body_mask):
    """Noise in the paraspinal muscles."""
    return roi_noise(hu, spacing, paraspinal_muscle_roi(hu, spacing, body_mask))
