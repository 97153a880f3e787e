"""Noise IQMs."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from metrics.registry import register_iqm

CHRISTIANSON2015 = ("Christianson O, Winslow J, Frush DP, Samei E. Automated technique to measure noise in "
                    "clinical CT examinations. AJR 2015;205:W93-W99 (global noise index)")


#: slices processed together by the per-slice noise maps (bounds their float32 temporaries to a few MiB)
SLICE_CHUNK = 6


def local_sd_map(hu: np.ndarray, spacing, kernel_mm: float = 6.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-slice local mean and standard deviation (HU) in a square kernel of ``kernel_mm`` (odd pixels).

    SD uses the unbiased (n - 1) normalisation: sqrt(n/(n-1) * (E[x^2] - E[x]^2)). The kernel is at least
    9 x 9 pixels: a local SD misses the noise power at spatial frequencies below ~1/kernel, and FBP noise
    (ramp x apodisation NPS) is correlated over a few pixels; on the phantom (image and projection modes)
    5 px read 8-10 % low, 7 px 2-4 %, 9 px under 2 %. Computed in float32 (scipy accumulates the running
    sums in double; the rounding of E[x^2] at -1000 HU is ~0.06 HU^2, negligible against any noise variance)."""
    k = kernel_px(spacing, kernel_mm)
    x = np.asarray(hu, dtype=np.float32)
    size = (1, k, k)
    mean = ndi.uniform_filter(x, size=size, mode="nearest")
    mean2 = ndi.uniform_filter(x * x, size=size, mode="nearest")
    n = k * k
    var = np.clip(mean2 - mean * mean, 0, None) * np.float32(n / (n - 1))
    return mean, np.sqrt(var), k


def kernel_px(spacing, kernel_mm: float = 6.0) -> int:
    """Local-SD kernel width in pixels: max(9, kernel_mm / pixel) rounded up to odd."""
    return max(9, int(round(kernel_mm / spacing[2])) | 1)


def whole_kernel_inside(mask: np.ndarray, k: int) -> np.ndarray:
    """Voxels whose whole k x k in-plane window lies inside ``mask`` (and inside the image): the binary
    erosion by a (1, k, k) box, computed as a box mean of the mask (separable, ~2x faster than
    scipy.ndimage.binary_erosion with a 9 x 9 structure, identical result)."""
    frac = ndi.uniform_filter(mask.astype(np.float32), size=(1, k, k), mode="constant", cval=0.0)
    return frac > np.float32(1.0 - 0.5 / (k * k))


def _bbox_2d(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice]:
    """In-plane bounding box (rows, cols) of a [z, y, x] mask over all its slices, widened by margin."""
    rows = np.nonzero(mask.any(axis=(0, 2)))[0]
    cols = np.nonzero(mask.any(axis=(0, 1)))[0]
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[1])),
            slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[2])))


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


def histogram_mode_signed(values: np.ndarray, bin_hu: float = 1.0) -> float:
    """Mode of values of any sign: histogram with ``bin_hu`` bins over their range, smoothed with a
    Gaussian of 2 bins, arg-max."""
    lo, hi = float(values.min()), float(values.max()) + bin_hu
    hist, edges = np.histogram(values, bins=max(int((hi - lo) / bin_hu), 1), range=(lo, hi))
    i = int(np.argmax(ndi.gaussian_filter1d(hist.astype(float), 2.0)))
    return float(0.5 * (edges[i] + edges[i + 1]))


def histogram_mode(values: np.ndarray, bin_hu: float = 0.2) -> float:
    """Mode of a distribution: histogram with ``bin_hu`` bins up to the 99th percentile, smoothed with a
    Gaussian of 2 bins, arg-max."""
    hi = float(np.percentile(values, 99)) + bin_hu
    bins = max(int(hi / bin_hu), 10)
    hist, edges = np.histogram(values, bins=bins, range=(0.0, hi))
    hist = ndi.gaussian_filter1d(hist.astype(float), 2.0)
    i = int(np.argmax(hist))
    return float(0.5 * (edges[i] + edges[i + 1]))


GNI_MAX_SLICES = 24
AIR_MAX_SLICES = 24


def _body_slice_sample(body_mask, n: int) -> np.ndarray:
    """At most n slice indices, evenly spaced over the slices that contain the body."""
    zs = np.nonzero(body_mask.reshape(body_mask.shape[0], -1).any(axis=1))[0]
    return zs if zs.size <= n else zs[np.linspace(0, zs.size - 1, n).round().astype(int)]


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
    distribution (raw 0-100 HU thresholds bias the SD low once SD approaches 30 HU). At most 24 slices,
    evenly spaced over the body, are used, each cropped to the body's bounding box (a voxel whose whole
    kernel is inside the body has its kernel inside the box, so the crop changes nothing)."""
    zs = _body_slice_sample(body_mask, GNI_MAX_SLICES)
    if zs.size == 0:
        return None
    rows, cols = _bbox_2d(body_mask[zs])
    vals = []
    # every step is per slice (kernels are (1, k, k)): a few slices at a time keep the float32 maps small
    for i in range(0, zs.size, SLICE_CHUNK):
        z = zs[i : i + SLICE_CHUNK]
        mean, sd, k = local_sd_map(hu[z][:, rows, cols], spacing)
        soft = (mean >= 0) & (mean <= 100) & body_mask[z][:, rows, cols]
        vals.append(sd[whole_kernel_inside(soft, k)])
    vals = np.concatenate(vals)
    if vals.size < 200:
        return None
    return histogram_mode(vals)


def block_view(x: np.ndarray, k: int) -> np.ndarray:
    """[z, y, x] -> [z, y // k, k, x // k, k] view of the non-overlapping k x k in-plane blocks (the last
    partial row/column of blocks is dropped). Reduce over axis 2 first (element-wise across rows, fast),
    then over axis 4."""
    nz, ny, nx = x.shape
    by, bx = ny // k, nx // k
    return x[:, : by * k, : bx * k].reshape(nz, by, k, bx, k)


def _block_reduce(x: np.ndarray, k: int, fn, **kw) -> np.ndarray:
    return fn(fn(block_view(x, k), axis=2, **kw), axis=-1)


@register_iqm(
    unit="HU",
    direction="lower_is_better",
    formula="mode{ SD(B) : B = k x k block (k as the global noise index) of air (< -800 HU) >= 10 mm from the body "
    "and from the field-of-view edge }",
    reference=CHRISTIANSON2015 + "; MRIQC-style background noise (Mortamet et al. 2009)",
)
def air_noise_sd_hu(hu, spacing, body_mask, fov):
    """Noise in the air around the patient (mode of the local SD). Truncated when the scanner clamps at
    -1024 HU and the noise exceeds ~10 HU; streaks from the table or metal raise it.

    The local SD is taken in the non-overlapping k x k blocks (k as :func:`local_sd_map`, unbiased SD)
    that lie wholly in air below -800 HU, at least ceil(10 mm / k px) blocks (>= 10 mm) away from any
    block holding body and from the edge of the field of view, on at most 24 slices evenly spaced over the
    body. Non-overlapping blocks are a subset of the sliding windows of :func:`local_sd_map`, so the mode
    is the same up to sampling noise; the air around a patient holds thousands of blocks per slice."""
    zs = _body_slice_sample(body_mask, AIR_MAX_SLICES)
    if zs.size == 0:
        return None
    k = kernel_px(spacing)
    body_b = _block_reduce(body_mask[zs], k, np.any)
    fov_b = _block_reduce(fov[zs], k, np.all)
    # per-block max, sum and sum of squares, a few slices at a time (no float32 copy of all the slices)
    parts = []
    for i in range(0, zs.size, SLICE_CHUNK):
        sub = np.asarray(hu[zs[i : i + SLICE_CHUNK]], dtype=np.float32)
        parts.append((_block_reduce(sub, k, np.max), _block_reduce(sub, k, np.sum, dtype=np.float64),
                      _block_reduce(sub * sub, k, np.sum, dtype=np.float64)))
    vmax, s1, s2 = (np.concatenate(p) for p in zip(*parts))
    air_b = (vmax < -800) & fov_b
    m = max(1, int(np.ceil(10.0 / (k * spacing[2]))))
    size = (1, 2 * m + 1, 2 * m + 1)
    air_b &= ~ndi.maximum_filter(body_b, size=size, mode="constant", cval=False)
    air_b &= ndi.minimum_filter(fov_b, size=size, mode="constant", cval=False)
    if air_b.sum() < 50:
        return None
    n = k * k
    s1, s2 = s1[air_b], s2[air_b]
    return histogram_mode(np.sqrt(np.clip(s2 - s1 * s1 / n, 0, None) / (n - 1)))


# ------------------------------------------------------------------ SNR (Chest CT-IQA head)
CHEST_CT_IQA = ("SNR label of the Chest CT-IQA multi-head model (3-D VGG with window, dose, SNR and BRISQUE heads); "
                "the definition implemented is the common sub-volume SNR (mean / SD per sub-volume, averaged), see "
                "the docstring; Bushberg et al., Essential Physics of Medical Imaging 3rd ed. (SNR = mean / SD)")
SNR_BLOCK_MM = 16.0
SNR_MAX_SLICES = 24
SNR_OFFSET_HU = 1024.0


def snr_blocks(hu: np.ndarray, spacing, body_mask: np.ndarray, max_slices: int = SNR_MAX_SLICES):
    """Per-block (mean, SD, homogeneous) of the sub-volumes used by :func:`snr_subvolume_mean`.

    Sub-volumes: non-overlapping b x b pixel x 1 slice blocks, b = max(8 px, 16 mm), on at most
    ``max_slices`` slices evenly spaced over the body, lying wholly inside the body. Signal I = HU + 1024
    (the stored CT value, air = 0), SD unbiased. Homogeneous: SD_B <= 1.5 x the mode of SD_B over all body
    blocks; the mode is the noise of the anatomically flat blocks (the majority), blocks across an organ
    edge or a vessel sit in the long upper tail. Returns (mean [n], sd [n], homogeneous [n] bool)."""
    b = max(8, int(round(SNR_BLOCK_MM / spacing[2])))
    zs = _body_slice_sample(body_mask, max_slices)
    if zs.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, bool)
    body = body_mask[zs]
    rows, cols = _bbox_2d(body)  # blocks are laid from the corner of the body's bounding box
    body = body[:, rows, cols]
    inside = _block_reduce(body, b, np.all)
    n = b * b
    sums = []
    for i in range(0, zs.size, SLICE_CHUNK):  # per-block sums, a few slices at a time (small float32 copies)
        x = np.asarray(hu[zs[i : i + SLICE_CHUNK]][:, rows, cols], dtype=np.float32)
        sums.append((_block_reduce(x, b, np.sum, dtype=np.float64), _block_reduce(x * x, b, np.sum, dtype=np.float64)))
    s1, s2 = (np.concatenate(p)[inside] for p in zip(*sums))
    mean_hu = s1 / n
    sd = np.sqrt(np.clip(s2 - s1 * mean_hu, 0, None) / (n - 1))
    mean = mean_hu + SNR_OFFSET_HU
    if sd.size < 10:
        return mean, sd, np.zeros(sd.size, bool)
    mode = histogram_mode(sd, bin_hu=max(0.05, float(np.median(sd)) / 100.0))
    return mean, sd, sd <= 1.5 * mode


@register_iqm(
    unit="1",
    direction="higher_is_better",
    formula="SNR = mean over homogeneous sub-volumes B of mean_B(I) / SD_B(I), I = HU + 1024; B = 16 mm x 16 mm x "
    "1 slice blocks wholly inside the body with SD_B <= 1.5 x mode(SD_B) (anatomically flat)",
    reference=CHEST_CT_IQA,
)
def snr_subvolume_mean(hu, spacing, body_mask):
    """Signal-to-noise ratio averaged over homogeneous sub-volumes of the body (the Chest CT-IQA SNR label).

    The Chest CT-IQA paper's own text was not available to us (searched); implemented is the definition
    commonly used for volume-level CT SNR labels: the volume is split into sub-volumes, SNR per sub-volume
    = mean / SD, averaged over sub-volumes. Choices made explicit here: (1) the signal is the stored CT
    value HU + 1024 (air = 0), since mean / SD of raw HU changes sign between fat and water and is
    undefined near 0 HU; (2) sub-volumes are 16 mm x 16 mm blocks one slice thick, on at most 24 slices
    evenly spaced over the body, wholly inside the body; (3) only homogeneous blocks count (see
    :func:`snr_blocks`): a block across an organ edge has an SD set by the anatomy, not the dose, and
    would make the SNR insensitive to the noise. SNR then falls as 1/noise SD, i.e. as sqrt(mAs)."""
    mean, sd, homogeneous = snr_blocks(hu, spacing, body_mask)
    keep = homogeneous & (sd > 0)
    if keep.sum() < 10:
        return None
    return float(np.mean(mean[keep] / sd[keep]))


def grey_white_classes(hu: np.ndarray, intracranial_mask: np.ndarray, spacing):
    """Grey/white matter split inside the cranial cavity: brain voxels (15-55 HU after 1.5 mm in-plane Gaussian
    smoothing, cavity eroded 3 mm) split by a 2-class Gaussian mixture (scikit-learn) on the smoothed values.
    Returns (gm, wm) boolean masks eroded by 1 px to avoid partial volume, or None."""
    from scipy import ndimage as ndi
    from sklearn.mixture import GaussianMixture

    sig = 1.5 / spacing[2]
    smooth = ndi.gaussian_filter(hu, sigma=(0, sig, sig), output=np.float32)  # float: hu may be int16
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
        smooth = ndi.gaussian_filter(hu[k], 3, output=np.float32)  # float: hu may be int16
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


def roi_noise(hu, spacing, roi) -> float | None:
    """Mode of the local SD (kernel as :func:`local_sd_map`) over an ROI whose whole kernel lies inside it.
    ``roi``: a [z, y, x] mask or a {slice index: 2-D mask} dict. Computed in the ROI's bounding box (a voxel
    whose whole kernel is in the ROI has its kernel in the box: same result as on the full slices)."""
    if isinstance(roi, dict):
        zs = np.array(sorted(k for k, m in roi.items() if m.any()), dtype=int)
        stack = lambda idx: np.stack([roi[k] for k in idx]) if len(idx) else np.zeros((0,) + hu.shape[1:], bool)
    else:
        zs = np.nonzero(roi.reshape(roi.shape[0], -1).any(axis=1))[0]
        stack = lambda idx: roi[idx]
    if zs.size == 0:
        return None
    if zs.size > 24:
        zs = zs[np.linspace(0, zs.size - 1, 24).round().astype(int)]
    r = stack(zs)
    rows, cols = _bbox_2d(r)
    vals = []
    for i in range(0, zs.size, SLICE_CHUNK):  # per-slice maps, a few slices at a time (small temporaries)
        _mean, sd, k = local_sd_map(hu[zs[i : i + SLICE_CHUNK]][:, rows, cols], spacing)
        vals.append(sd[whole_kernel_inside(r[i : i + SLICE_CHUNK, rows, cols], k)])
    vals = np.concatenate(vals)
    if vals.size < 100:
        return None
    return histogram_mode(vals)


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
    smooth = ndi.gaussian_filter(hu, sigma=(0, sig, sig), output=np.float32)  # float: hu may be int16
    return intracranial_mask & low & posterior & (smooth > 15) & (smooth < 55)


def _sample_slices(body_mask, n: int = 24) -> np.ndarray:
    """At most n slice indices, evenly spaced over the slices that contain the body (ROIs need no more)."""
    zs = np.nonzero(body_mask.reshape(body_mask.shape[0], -1).any(axis=1))[0]
    return zs if zs.size <= n else zs[np.linspace(0, zs.size - 1, n).round().astype(int)]


def _body_box(body2d: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows = np.nonzero(body2d.any(axis=1))[0]
    cols = np.nonzero(body2d.any(axis=0))[0]
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def subcutaneous_fat_roi(hu, spacing, body_mask):
    """Subcutaneous-fat ROI as a [z, y, x] mask (see :func:`_subcutaneous_fat_roi_slices`)."""
    return _as_volume(_subcutaneous_fat_roi_slices(hu, spacing, body_mask), hu.shape)


def _subcutaneous_fat_roi_slices(hu, spacing, body_mask) -> dict:
    """Fat (1.5 mm-smoothed -150..-50 HU) 3 px to 40 mm deep to the body surface, eroded by 2 px (edges blurred
    by the kernel), on at most 24 slices. Computed in the body's bounding box (+ the smoothing's reach):
    the same masks as on the full slices."""
    sig = 1.5 / spacing[2]
    roi = {}
    for k in _sample_slices(body_mask):
        sl = _body_box(body_mask[k], int(np.ceil(4 * sig)) + 1)
        body = body_mask[k][sl]
        smooth = ndi.gaussian_filter(hu[k][sl], sigma=sig, output=np.float32)  # float: hu may be int16
        depth = ndi.distance_transform_edt(body, sampling=spacing[1:])
        band = body & (depth > 3 * spacing[2]) & (depth <= 40) & (smooth > -150) & (smooth < -50)
        full = np.zeros(hu.shape[1:], dtype=bool)
        full[sl] = ndi.binary_erosion(band, structure=np.ones((5, 5), bool))
        roi[k] = full
    return roi


def paraspinal_muscle_roi(hu, spacing, body_mask):
    """Paraspinal-muscle ROI as a [z, y, x] mask (see :func:`_paraspinal_muscle_roi_slices`)."""
    return _as_volume(_paraspinal_muscle_roi_slices(hu, spacing, body_mask), hu.shape)


def _paraspinal_muscle_roi_slices(hu, spacing, body_mask) -> dict:
    """Muscle (3 mm-smoothed 20-80 HU) 5-60 mm from the vertebral body (the largest bone component near the
    posterior midline), posterior to its centre, on at most 24 slices. Computed in the body's bounding box
    (+ the smoothing's reach) and distances in the vertebra's box + 60 mm: the same masks as on full slices."""
    sig = ROI_SMOOTH_MM / spacing[2]
    roi = {}
    for k in _sample_slices(body_mask):
        sl = _body_box(body_mask[k], int(np.ceil(4 * sig)) + 1)
        body = body_mask[k][sl]
        smooth = ndi.gaussian_filter(hu[k][sl], sigma=sig, output=np.float32)  # float: hu may be int16
        ys, xs = np.nonzero(body)
        x_mid = 0.5 * (xs.min() + xs.max())
        lab, n = ndi.label((smooth > 150) & body)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        best, best_size = None, 0
        for j, ob in enumerate(ndi.find_objects(lab), start=1):
            cy, cx = (ob[0].start + ob[0].stop) / 2, (ob[1].start + ob[1].stop) / 2
            size = int(sizes[j])
            near_midline = abs(cx - x_mid) * spacing[2] < 25 and cy > ys.mean()
            if near_midline and size * spacing[1] * spacing[2] > 200 and size > best_size:
                best, best_size = j, size
        if best is None:
            continue
        vert = lab == best
        vy, vx = np.nonzero(vert)
        # distances <= 60 mm only: the EDT in the vertebra's box widened by 60 mm (+1 px) is exact there
        r = int(np.ceil(60.0 / min(spacing[1], spacing[2]))) + 1
        box = (slice(max(vy.min() - r, 0), vy.max() + r + 1), slice(max(vx.min() - r, 0), vx.max() + r + 1))
        d = np.full(vert.shape, np.inf)
        d[box] = ndi.distance_transform_edt(~vert[box], sampling=spacing[1:])
        m = (d >= 5) & (d <= 60) & body & (smooth > 20) & (smooth < 80)
        m[: int(vy.mean()), :] = False
        full = np.zeros(hu.shape[1:], dtype=bool)
        full[sl] = m
        roi[k] = full
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
    vals = _roi_values(hu, _subcutaneous_fat_roi_slices(hu, spacing, body_mask))
    v = np.concatenate(vals) if vals else np.zeros(0)
    return float(v.std()) if v.size >= 200 else None


@register_iqm(unit="HU", direction="lower_is_better", regions=("chest",), reference=ROI_REF,
              formula="mode of local SD over muscle (3 mm-smoothed 20-80 HU) 5-60 mm posterior/lateral of the "
              "vertebral body")
def noise_sd_paraspinal_muscle_hu(hu, spacing, body_mask):
    """Noise in the paraspinal muscles."""
    return roi_noise(hu, spacing, _paraspinal_muscle_roi_slices(hu, spacing, body_mask))


# ------------------------------------------------------------------ chest: tracheal air, mediastinal blood
CHEST_ROI_MAX_SLICES = 12
BLOOD_MAX_SLICES = 8


def _pooled_sd(values: list[np.ndarray]) -> float | None:
    """SD over per-slice ROI values after removing each slice's mean (pooled within-slice SD,
    n - #slices degrees of freedom): ROIs too small for the local-SD kernel, tissue level may differ
    between slices."""
    n = sum(v.size for v in values)
    dof = n - len(values)
    if n < 200 or dof <= 0:
        return None
    ss = sum(float(((v - v.mean()) ** 2).sum()) for v in values)
    return float(np.sqrt(ss / dof))


def _coarse(img: np.ndarray, f: int, reduce=np.mean) -> np.ndarray:
    """Block-reduce a 2-D image by f x f (the last partial row/column dropped); reduce is np.mean, np.all
    or np.any (computed from the f^2 strided sub-images: element-wise, fast)."""
    if f == 1:
        return img
    ny, nx = img.shape[0] // f * f, img.shape[1] // f * f
    parts = [img[i:ny:f, j:nx:f] for i in range(f) for j in range(f)]
    if reduce is np.all:
        return np.logical_and.reduce(parts)
    if reduce is np.any:
        return np.logical_or.reduce(parts)
    return np.add.reduce([p.astype(np.float32) for p in parts]) / np.float32(f * f)


def _fine(mask: np.ndarray, f: int, shape) -> np.ndarray:
    """Expand a block-reduced mask back to ``shape`` (pixels beyond the last full block stay False)."""
    if f == 1:
        return mask
    out = np.zeros(shape, dtype=bool)
    up = mask.repeat(f, axis=0).repeat(f, axis=1)
    out[: up.shape[0], : up.shape[1]] = up
    return out


def _working_factor(spacing, mm: float = 2.0) -> int:
    """Block factor for ROI placement on a ~2 mm grid (1 at >= 1.5 mm pixels)."""
    return max(1, int(round(mm / float(spacing[2]))))


def tracheal_air_roi(hu, spacing, body_mask, lung_mask):
    """Trachea ROI as a [z, y, x] mask (see :func:`_tracheal_air_roi_slices`)."""
    return _as_volume(_tracheal_air_roi_slices(hu, spacing, body_mask, lung_mask), hu.shape)


def _as_volume(rois: dict, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for k, m in rois.items():
        out[k] = m
    return out


def _roi_values(hu, rois: dict) -> list[np.ndarray]:
    return [hu[k][m].astype(np.float64) for k, m in rois.items() if m.any()]


def _tracheal_air_roi_slices(hu, spacing, body_mask, lung_mask) -> dict:
    """Trachea: per slice (at most 36, evenly spaced over the body), the largest air component (1 mm-smoothed
    < -500 HU, inside the body, not lung) of 0.8-8 cm2, centred within 25 mm of the body's left-right middle,
    in the anterior two thirds of the body and compact (>= 55 % of its bounding box); its core below -900 HU
    (1 mm-smoothed: >= ~1 mm from the wall even when the wall is blurred), eroded by 1 mm. Placed on a ~2 mm
    grid (block means), applied at full resolution."""
    roi = {}
    f = _working_factor(spacing)
    px = float(spacing[2]) * f
    px_cm2 = px * px / 100.0
    er = int(round(1.0 / spacing[2]))
    for k in _body_slice_sample(body_mask, 3 * CHEST_ROI_MAX_SLICES):
        rows = np.nonzero(body_mask[k].any(axis=1))[0]
        cols = np.nonzero(body_mask[k].any(axis=0))[0]
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        body = _coarse(body_mask[k][sl], f, np.all)
        lung = _coarse(lung_mask[k][sl], f, np.any)
        smooth = ndi.gaussian_filter(_coarse(hu[k][sl].astype(np.float32), f), 1.0 / px)
        air = (smooth < -500) & body & ~lung
        lab, n = ndi.label(air)
        if n == 0:
            continue
        area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        objs = ndi.find_objects(lab)
        y0 = np.array([o[0].start for o in objs]); y1 = np.array([o[0].stop for o in objs])
        x0 = np.array([o[1].start for o in objs]); x1 = np.array([o[1].stop for o in objs])
        cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
        ok = ((area * px_cm2 >= 0.8) & (area * px_cm2 <= 8.0) & (np.abs(cx - (body.shape[1] - 1) / 2) * px <= 25.0)
              & (cy <= (body.shape[0] - 1) * 2.0 / 3.0) & (area >= 0.55 * (y1 - y0) * (x1 - x0)))
        if not ok.any():
            continue
        best = int(np.argmax(np.where(ok, area, -1))) + 1
        # the air core (< -900 HU smoothed: no wall partial volume even with a blurred wall), eroded
        core = _fine((lab == best) & (smooth < -900), f, body_mask[k][sl].shape)
        full = np.zeros(hu.shape[1:], dtype=bool)
        full[sl] = ndi.binary_erosion(core, iterations=er) if er else core
        roi[k] = full
    return roi


def mediastinal_blood_roi(hu, spacing, body_mask, lung_mask):
    """Blood-pool ROI as a [z, y, x] mask (see :func:`_mediastinal_blood_roi_slices`)."""
    return _as_volume(_mediastinal_blood_roi_slices(hu, spacing, body_mask, lung_mask), hu.shape)


def _mediastinal_blood_roi_slices(hu, spacing, body_mask, lung_mask) -> dict:
    """Blood pool: on at most 8 slices with >= 50 % of the largest lung area (mid-chest: no neck, little liver),
    the largest disc of blood-density tissue (5 mm-smoothed 10-80 HU unenhanced, or 150-600 HU enhanced) in
    the mediastinum (not lung, with lung to its left and right on the same row, anterior to the vertebral
    body's centre): the heart or the descending aorta on real scans. The disc is centred at the maximum of
    the distance transform, radius = min(that distance - 2 mm, 15 mm) (>= 4 mm), and keeps the pixels whose
    8 mm- and 5 mm-smoothed values are within 5 HU of the mode of the 8 mm-smoothed value over the disc (one
    tissue: muscle 50, blood 40 and liver 60 HU differ by 10 HU; the smoothing keeps the choice independent
    of the pixels' own noise, which a per-pixel threshold would truncate), eroded 1 px. Placed on a ~2 mm grid (block means), the disc
    drawn at full resolution."""
    from metrics.perceptual import slice_areas

    roi = {}
    f = _working_factor(spacing)
    px_full = float(spacing[2])
    px = px_full * f
    lung_area = slice_areas(lung_mask)
    if lung_area.max() == 0:
        return roi
    ks = np.nonzero(lung_area >= 0.5 * lung_area.max())[0]
    ks = ks if ks.size <= BLOOD_MAX_SLICES else ks[np.linspace(0, ks.size - 1, BLOOD_MAX_SLICES).round().astype(int)]
    for k in ks:
        rows = np.nonzero(body_mask[k].any(axis=1))[0]
        cols = np.nonzero(body_mask[k].any(axis=0))[0]
        if rows.size < 10:
            continue
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        lung = _coarse(lung_mask[k][sl], f, np.any)
        left = np.maximum.accumulate(lung, axis=1)
        right = np.maximum.accumulate(lung[:, ::-1], axis=1)[:, ::-1]
        med = _coarse(body_mask[k][sl], f, np.all) & ~lung & left & right
        if med.sum() < 25:
            continue
        # work on the mediastinum's box, with a margin for the smoothing
        mr, mc = np.nonzero(med.any(axis=1))[0], np.nonzero(med.any(axis=0))[0]
        mg = int(np.ceil(16.0 / px))
        y0, x0 = max(mr[0] - mg, 0), max(mc[0] - mg, 0)
        box = (slice(y0, mr[-1] + mg + 1), slice(x0, mc[-1] + mg + 1))
        med = med[box]
        img = _coarse(hu[k][sl].astype(np.float32), f)[box]
        smooth = ndi.gaussian_filter(img, 5.0 / px)
        # vertebral body: bone (> 150 HU, 5 mm-smoothed) in the posterior half of the mediastinum's rows
        mrows = np.nonzero(med.any(axis=1))[0]
        post = med & (smooth > 150) & (np.arange(med.shape[0]) >= (mrows[0] + mrows[-1]) / 2)[:, None]
        y_vert = float(np.nonzero(post)[0].mean()) if post.sum() > 5 else float(med.shape[0])
        anterior = (np.arange(med.shape[0]) < y_vert)[:, None]
        best_r, best_c = 0.0, None
        for lo, hi in ((10.0, 80.0), (150.0, 600.0)):
            cand = med & anterior & (smooth >= lo) & (smooth <= hi)
            if cand.sum() < 5:
                continue
            dt = ndi.distance_transform_edt(cand, sampling=(px, px))
            i = int(np.argmax(dt))
            if dt.flat[i] > best_r:
                best_r, best_c = float(dt.flat[i]), np.unravel_index(i, dt.shape)
        r = min(best_r - 2.0, 15.0)
        if best_c is None or r < 4.0:
            continue
        wide = ndi.gaussian_filter(img, 8.0 / px)
        yy, xx = np.ogrid[: wide.shape[0], : wide.shape[1]]
        in_disc = ((yy - best_c[0]) ** 2 + (xx - best_c[1]) ** 2) * px * px <= r * r
        level = histogram_mode_signed(wide[in_disc])  # the disc's majority tissue, not a mix at an edge
        same = np.zeros(_coarse(body_mask[k][sl], f, np.all).shape, dtype=bool)
        same[box] = (np.abs(wide - level) <= 5.0) & (np.abs(smooth - level) <= 5.0)
        wide = _fine(same, f, body_mask[k][sl].shape)
        cy, cx = (best_c[0] + y0 + 0.5) * f - 0.5, (best_c[1] + x0 + 0.5) * f - 0.5
        yy, xx = np.ogrid[: wide.shape[0], : wide.shape[1]]
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) * px_full**2 <= r * r
        full = np.zeros(hu.shape[1:], dtype=bool)
        full[sl] = ndi.binary_erosion(disc & wide)
        roi[k] = full
    return roi


@register_iqm(unit="HU", direction="lower_is_better", regions=("chest",), reference=ROI_REF,
              formula="SD of HU in the trachea (air component 0.8-8 cm2 near the midline, "
              "anterior, compact; core < -900 HU eroded 1 mm) on <= 36 slices; no anatomy in air: one mean")
def noise_sd_tracheal_air_hu(hu, spacing, body_mask, lung_mask):
    """Noise in the tracheal air column. Like the outside air, truncated by the -1024 HU clamp once the
    noise exceeds ~10 HU."""
    vals = _roi_values(hu, _tracheal_air_roi_slices(hu, spacing, body_mask, lung_mask))
    v = np.concatenate(vals) if vals else np.zeros(0)
    return float(v.std(ddof=1)) if v.size >= 200 else None


@register_iqm(unit="HU", direction="lower_is_better", regions=("chest",), reference=ROI_REF,
              formula="pooled within-slice SD of HU in the largest homogeneous blood-density disc of the "
              "mediastinum (descending aorta or cardiac chamber) on <= 8 mid-chest slices")
def noise_sd_mediastinal_blood_hu(hu, spacing, body_mask, lung_mask):
    """Noise in the mediastinal blood pool (descending aorta or heart), the usual chest-CT noise ROI."""
    return _pooled_sd(_roi_values(hu, _mediastinal_blood_roi_slices(hu, spacing, body_mask, lung_mask)))
