"""SNR (Chest CT-IQA), BRISQUE, air-skin edge f50 and chest ROI noise against ground truth.

Truths: synthetic images with known statistics (uniform noise regions, generalised-Gaussian samples, discs
blurred analytically with a Gaussian PSF), the simulator's known noise field and kernel PSF, and the
reference ``brisque`` package (its scores on deterministic images, recorded below).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import special
from scipy.stats import spearmanr

from phantoms import simulate
from phantoms.simulate import KERNELS, shaped_noise
from phantoms.tissues import NAME_TO_LABEL
from qc.pipeline import compute_masks
from tests.conftest import shared_path


# ------------------------------------------------------------------ SNR
@pytest.mark.parametrize("window", ["hann", "ramp"])
def test_snr_equals_mean_over_sd_in_a_uniform_region(window):
    """40 HU cylinder (stored value 1064) with FBP-textured noise of SD 20 HU, 0.98 mm pixels: SNR = 1064 / 20."""
    from metrics.noise import snr_subvolume_mean

    rng = np.random.default_rng(1)
    n = 384
    yy, xx = np.mgrid[:n, :n]
    body = np.broadcast_to(np.hypot(yy - 191.5, xx - 191.5) < 170, (6, n, n)).copy()
    hu = np.where(body, 40.0 + 20.0 * shaped_noise((6, n, n), window, rng), -1000.0).astype(np.float32)
    got = snr_subvolume_mean(hu, (5.0, 0.98, 0.98), body)
    assert got == pytest.approx(1064.0 / 20.0, rel=0.05)


@pytest.mark.parametrize("kernel", ["smooth", "sharp"])
def test_snr_falls_as_the_square_root_of_mas(kernel):
    """Same patient and noise draws at 25 and 100 mAs: noise doubles, the SNR halves (within 10 %)."""
    from metrics.noise import snr_subvolume_mean

    snr = {}
    for mas in (25, 100):
        ph = simulate("chest", seed=2, mas=mas, kernel=kernel, z_start=-80.0, z_end=-20.0)
        snr[mas] = snr_subvolume_mean(ph.scan.hu, ph.scan.spacing, compute_masks(ph.scan)["body_mask"])
    assert snr[100] / snr[25] == pytest.approx(2.0, rel=0.10)


# ------------------------------------------------------------------ BRISQUE features and score
def _hash_uniform(n, m, salt):
    """Deterministic pseudo-random numbers in [0, 1) (Knuth multiplicative hash: no dependence on numpy's RNG)."""
    i = np.arange(n * m, dtype=np.uint64) + np.uint64(salt * 1000003)
    return (((i * np.uint64(2654435761)) % np.uint64(4294967296)).astype(np.float64) / 4294967296.0).reshape(n, m)


def _synthetic_image(n=96, m=128):
    y, x = np.mgrid[:n, :m].astype(np.float64)
    img = 90 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0) + 40 * (((x - 70) ** 2 + (y - 40) ** 2) < 400)
    img += 50 * ((x > 20) & (x < 30))
    img += 12 * (_hash_uniform(n, m, 0) - 0.5)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _noise_image(n=81, m=100):  # odd size: exercises the 2x down-sampling's extra row
    u = sum(_hash_uniform(n, m, s) for s in range(1, 5)) - 2.0
    return np.clip(np.rint(128 + 60 * u), 0, 255).astype(np.uint8)


# Reference: brisque 0.2.0 (PyPI) under numpy 2.3.5, opencv-python-headless, libsvm-official 3.37, in a
# throw-away venv: BRISQUE(url=False).score(np.stack([img] * 3, -1)) and, for the features,
# calculate_brisque_features(img / 255) plus the same on cv2.resize(img / 255, fx=fy=0.5, INTER_CUBIC).
REFERENCE = {
    "synthetic": (_synthetic_image, 106.59504288543584, [
        11.206702, 0.27225709, 1.4730455, -0.018916083, 0.054212688, 0.043311445, 1.1260716, -0.09181199,
        0.19723046, 0.10101654, 1.2553411, -0.061034943, 0.092654691, 0.049423848, 1.9233432, 0.010072752,
        0.036200692, 0.041187359, 1.5780815, 0.16654058, 0.47568768, 0.0085785559, 0.0389559, 0.045562639,
        0.47115932, 0.063521228, 0.02299547, 0.073628117, 0.5084006, -0.028046999, 0.049073598, 0.029157012,
        0.5294448, -0.044789137, 0.078372985, 0.040197436]),
    "noise": (_noise_image, 150.52891957472468, [
        6.6637301, 0.80269693, 1.3050848, -0.48339234, 0.86304281, 0.080515413, 2.088672, 0.011057834,
        0.41873712, 0.43677758, 1.5663247, -0.47590626, 0.8107228, 0.080880135, 1.8179952, 0.092921126,
        0.36917749, 0.52621311, 5.2374605, 0.7085913, 1.8006577, -0.22248639, 0.49570036, 0.17778392,
        1.113011, -0.45481361, 0.80263838, 0.072225802, 1.1926916, 0.39178118, 0.15430903, 0.85583087,
        1.5515127, -0.31588035, 0.58608248, 0.12680413]),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_brisque_reproduces_the_reference_package(name):
    from metrics.perceptual import brisque_features, brisque_score_from_features

    make, score, feats = REFERENCE[name]
    f = brisque_features(make().astype(np.float32) / 255.0)
    # MSCN in float32 (1e-5 from float64 on these images; the fits on the reference's own MSCN agree to 1e-8):
    # features within 5e-4 absolute, the score within 0.05
    np.testing.assert_allclose(f, feats, rtol=2e-4, atol=5e-4)
    assert brisque_score_from_features(f) == pytest.approx(score, abs=0.05)
    # the SVR itself, evaluated on the reference features, is exact
    assert brisque_score_from_features(np.array(feats)) == pytest.approx(score, abs=1e-3)


def test_brisque_score_of_a_natural_image_matches_the_reference():
    from skimage import data

    from metrics.perceptual import brisque_score

    assert brisque_score(data.camera().astype(np.float32) / 255.0) == pytest.approx(-7.879404294309921, abs=0.05)


def _aggd_sample(rng, n, alpha, s_l, s_r):
    """Asymmetric generalised Gaussian: |x| = beta G^(1/alpha), G ~ Gamma(1/alpha); side chosen with
    probability beta_side / (beta_l + beta_r), beta = s sqrt(Gamma(1/alpha) / Gamma(3/alpha))."""
    c = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
    b_l, b_r = s_l * c, s_r * c
    left = rng.random(n) < b_l / (b_l + b_r)
    mag = rng.gamma(1.0 / alpha, 1.0, n) ** (1.0 / alpha)
    return np.where(left, -b_l * mag, b_r * mag)


@pytest.mark.parametrize("alpha, s_l, s_r", [(2.0, 1.0, 1.0), (1.0, 0.5, 0.5), (0.8, 0.3, 0.6), (3.0, 2.0, 1.2)])
def test_aggd_fit_recovers_known_parameters(alpha, s_l, s_r):
    from metrics.perceptual import aggd_fit

    x = _aggd_sample(np.random.default_rng(3), 400_000, alpha, s_l, s_r)
    a, eta, got_l, got_r = aggd_fit(x)
    assert a == pytest.approx(alpha, rel=0.03)
    assert got_l == pytest.approx(s_l, rel=0.01) and got_r == pytest.approx(s_r, rel=0.01)
    assert eta == pytest.approx(x.mean(), abs=0.01 * (s_l + s_r))  # the AGGD mean is the sample mean


def test_ggd_fit_of_gaussian_noise_has_shape_two_and_its_variance():
    from metrics.perceptual import ggd_fit

    x = np.random.default_rng(4).normal(0.0, 0.7, (512, 512))
    a, var = ggd_fit(x)
    assert a == pytest.approx(2.0, rel=0.02)
    assert var == pytest.approx(0.49, rel=0.01)


def test_mscn_matches_a_hand_computation():
    """MSCN at interior and border pixels from the explicit 7x7 Gaussian window (sigma 7/6, zero padding)."""
    from metrics.perceptual import mscn

    img = _synthetic_image().astype(np.float64) / 255.0
    g = np.exp(-(np.arange(-3, 4) ** 2) / (2 * (7 / 6) ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    pad = np.pad(img, 3)
    got = mscn(img.astype(np.float32))
    for y, x in ((40, 60), (0, 0), (95, 127), (10, 3)):
        win = pad[y : y + 7, x : x + 7]
        mu = (w * win).sum()
        sd = np.sqrt(abs((w * win * win).sum() - mu * mu))
        assert got[y, x] == pytest.approx((img[y, x] - mu) / (sd + 1 / 255), rel=1e-4, abs=1e-5)


# ------------------------------------------------------------------ BRISQUE on CT
@pytest.fixture(scope="module")
def chest_slab_512():
    ph = simulate("chest", seed=3, matrix=512, z_start=-60.0, z_end=-50.0)
    return ph, compute_masks(ph.scan)["body_mask"]


def test_brisque_rises_with_blur_on_a_phantom(chest_slab_512):
    from metrics.perceptual import brisque_soft_tissue

    ph, body = chest_slab_512
    sigmas = [0.0, 0.7, 1.4, 2.1]  # px
    scores = [brisque_soft_tissue(ndi.gaussian_filter(ph.scan.hu, (0, s, s)) if s else ph.scan.hu, body) for s in sigmas]
    assert spearmanr(sigmas, scores)[0] == 1.0


@pytest.mark.xfail(strict=True, reason=(
    "BRISQUE's natural-image SVR reads CT noise as texture: on the soft-tissue window the score FALLS as noise "
    "is added from 0 to ~20 HU (chest phantom 512: 107, 49, 37, 32, 37 for +0/5/10/20/40 HU; real GE head: 65, 53, 43, "
    "37) and only rises beyond (U-shaped); blur raises it monotonically"))
def test_brisque_rises_with_added_noise_on_a_phantom(chest_slab_512):
    from metrics.perceptual import brisque_soft_tissue

    ph, body = chest_slab_512
    unit = shaped_noise(ph.noise_free.shape, "hann", np.random.default_rng(0)).astype(np.float32)
    levels = [5.0, 10.0, 20.0, 40.0]
    scores = [brisque_soft_tissue(ph.noise_free + s * unit, body) for s in levels]
    assert spearmanr(levels, scores)[0] == 1.0


def test_brisque_ranks_the_ldctiqa_samples_like_their_quality_scores():
    """Real low-dose CT slices with 0-4 quality scores (shared/data/ldctiqa_samples): lower BRISQUE = better."""
    from skimage import io

    from metrics.perceptual import brisque_score

    folder = shared_path("ldctiqa_samples")
    quality = json.loads((folder / "scores.json").read_text())
    brisque = {}
    for name in quality:
        img = np.clip(io.imread(folder / name).astype(np.float32), 0, 1)
        brisque[name] = brisque_score(np.rint(img * 255) / 255)
    names = sorted(quality)
    assert spearmanr([quality[n] for n in names], [brisque[n] for n in names])[0] == -1.0


# ------------------------------------------------------------------ edge f50
def _mtf50_gaussian(sigma_mm):
    return np.sqrt(np.log(2) / 2) / (np.pi * sigma_mm)


@pytest.mark.parametrize("sigma_mm", [0.4, 0.7, 1.0])
def test_f50_of_a_disc_blurred_with_a_known_gaussian(sigma_mm):
    """Disc (radius 140 mm, 0.8 mm pixels) blurred analytically by a Gaussian PSF, 15 HU noise:
    f50 = sqrt(ln 2 / 2) / (pi sigma)."""
    from metrics.sharpness import edge_mtf50_per_mm

    px = 0.8
    n = 420
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot((yy - 0.45 * n) * px, (xx - 0.55 * n) * px)
    clean = -1000.0 + 1040.0 * 0.5 * special.erfc((r - 140.0) / (np.sqrt(2) * sigma_mm))
    rng = np.random.default_rng(5)
    hu = np.stack([clean + rng.normal(0, 15, clean.shape) for _ in range(2)]).astype(np.float32)
    body = np.stack([r < 140.0] * 2)
    got = edge_mtf50_per_mm(hu, (5.0, px, px), body)
    assert got == pytest.approx(_mtf50_gaussian(sigma_mm), rel=0.10)


@pytest.fixture(scope="module")
def head_slabs_512():
    return {k: simulate("head", seed=3, matrix=512, kernel=k, z_start=10.0, z_end=15.0) for k in ("smooth", "sharp")}


def test_f50_follows_the_simulator_kernel_psf(head_slabs_512):
    """Image-mode head phantom, 0.49 mm pixels: the kernel PSF is a Gaussian of 0.6 mm (smooth) / 0.3 mm (sharp)."""
    from metrics.sharpness import edge_mtf50_per_mm

    got = {}
    for kernel, ph in head_slabs_512.items():
        got[kernel] = edge_mtf50_per_mm(ph.scan.hu, ph.scan.spacing, compute_masks(ph.scan)["body_mask"])
        assert got[kernel] == pytest.approx(_mtf50_gaussian(KERNELS[kernel][0]), rel=0.10), kernel
    assert got["sharp"] > got["smooth"]


# ------------------------------------------------------------------ chest ROI noise
@pytest.mark.parametrize("kw", [dict(seed=2, kernel="sharp"), dict(seed=5, mas=30.0)])
def test_chest_roi_noise_matches_the_noise_field(kw):
    """Truth: SD of (noisy - noise-free twin) over the ROI the metric placed. The tracheal ROI lies in the
    airway; the blood-pool ROI in one tissue per slice (>= 97 % overall; a slice may hold a sliver of the heart
    apex, which 5 mm smoothing cannot separate from the muscle around it: 9 % on one slice of seed 5) and
    reaches the heart / aorta."""
    from metrics import noise as N

    ph = simulate("chest", z_start=-130.0, z_end=60.0, **kw)
    s, m = ph.scan, compute_masks(ph.scan)
    field = s.hu - ph.noise_free
    body, lung = m["body_mask"], m["lung_mask"]

    trachea = N.tracheal_air_roi(s.hu, s.spacing, body, lung)
    assert (ph.labels[trachea] == NAME_TO_LABEL["airway"]).mean() >= 0.98
    assert N.noise_sd_tracheal_air_hu(s.hu, s.spacing, body, lung) == pytest.approx(float(field[trachea].std()), rel=0.05)

    blood = N.mediastinal_blood_roi(s.hu, s.spacing, body, lung)
    majority = sum(np.bincount(ph.labels[k][blood[k]]).max() for k in range(blood.shape[0]) if blood[k].any())
    assert majority / blood.sum() >= 0.97
    heart = (ph.labels[blood] == NAME_TO_LABEL["heart_blood"]) | (ph.labels[blood] == NAME_TO_LABEL["aorta"])
    assert heart.mean() >= 0.3
    assert N.noise_sd_mediastinal_blood_hu(s.hu, s.spacing, body, lung) == pytest.approx(float(field[blood].std()),
                                                                                          rel=0.05)
