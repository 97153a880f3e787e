"""Perceptual (natural-scene-statistics) IQMs: BRISQUE on windowed CT slices.

BRISQUE (Mittal, Moorthy & Bovik, IEEE TIP 2012;21:4695-4708) describes an 8-bit grey image by 36
features: on the image and on a 2x down-scaled copy, the mean-subtracted contrast-normalised (MSCN)
coefficients and their four neighbour products (horizontal, vertical, two diagonals), each fitted with a
(asymmetric) generalised Gaussian. A support-vector regressor (RBF epsilon-SVR) maps the features to a
score that reads like a differential mean opinion score: about 0 for pristine natural images, higher for
noisier / blurrier / more distorted ones.

The features are written here with numpy/scipy (the ``brisque`` PyPI package breaks on numpy >= 2.4, pyiqa
and piq download weights at run time). The SVR is the model that the ``brisque`` package (v0.2.0, R. Guha,
Apache-2.0) ships as text: ``metrics/data/brisque_svm.txt`` is its ``models/svm.txt`` (libsvm text format,
770 support vectors, gamma 0.05) unchanged, and ``metrics/data/brisque_scale.json`` holds the 36 min/max
feature-scaling values of its ``models/normalize.pickle`` converted to JSON (no pickle is shipped); the
Apache-2.0 licence is in ``metrics/data/BRISQUE_MODEL_LICENSE.txt``. The package does not state the
database its model was trained on (its file layout, gamma and value ranges mirror the LIVE-trained model
of the original release). To reproduce its scores, the features follow that package's implementation
(the model was trained on them), which differs from the original MATLAB release in these details:

* grey levels scaled to [0, 1] and the MSCN stabiliser C = 1/255 (= C 1 on the 0-255 scale of the paper);
* the 7x7 Gaussian window (sigma 7/6) with zero padding at the image border;
* the MSCN shape/variance come from the asymmetric-GGD moment estimator (variance = (s_l^2 + s_r^2)/2),
  which equals the paper's GGD moment-matching fit when the left and right spreads are equal;
* neighbour products without wrap-around; the second scale from a 2x bicubic (a = -0.75, edge-replicate)
  down-sampling as OpenCV's ``INTER_CUBIC``.

Measured against the ``brisque`` 0.2.0 package itself (numpy 2.3 throw-away environment), see
``tests/test_metrics_perceptual.py``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy import special

from metrics.registry import register_iqm

DATA = Path(__file__).resolve().parent / "data"
MITTAL2012 = ("Mittal A, Moorthy AK, Bovik AC. No-reference image quality assessment in the spatial domain. "
              "IEEE Trans Image Process 2012;21(12):4695-4708 (BRISQUE); SVR model of the Python 'brisque' "
              "package 0.2.0 (Apache-2.0); CT use after the Chest CT-IQA BRISQUE head")

#: Fixed display window for BRISQUE on CT: soft tissue W400/L40, i.e. -160..240 HU -> grey 0..255.
BRISQUE_WINDOW_HU = (40.0, 400.0)
BRISQUE_MAX_SLICES = 8
MSCN_SIGMA = 7.0 / 6.0
MSCN_C = 1.0 / 255.0
_FEATURE_SETS = ("mscn", "horizontal", "vertical", "main_diagonal", "secondary_diagonal")


# ------------------------------------------------------------------ features
def window_to_unit(hu: np.ndarray, center: float = BRISQUE_WINDOW_HU[0],
                   width: float = BRISQUE_WINDOW_HU[1]) -> np.ndarray:
    """HU -> 8-bit display grey levels scaled to [0, 1] (float32): clip((HU - (C - W/2)) / W), quantised to
    256 levels as a display (and the 8-bit images BRISQUE was trained on) would."""
    lo = center - width / 2.0
    g = np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0)
    return np.rint(g * 255.0) / np.float32(255.0)


def mscn(image: np.ndarray) -> np.ndarray:
    """MSCN coefficients (I - mu) / (sigma + C) of one image [y, x] or a stack [n, y, x] (per 2-D image):
    mu, sigma^2 = 7x7 Gaussian (sigma 7/6) weighted local mean and variance, zero padding."""
    x = np.asarray(image, dtype=np.float32)
    sig = (0.0,) * (x.ndim - 2) + (MSCN_SIGMA, MSCN_SIGMA)
    mu = ndi.gaussian_filter(x, sig, mode="constant", cval=0.0, radius=3)
    m2 = ndi.gaussian_filter(x * x, sig, mode="constant", cval=0.0, radius=3)
    sd = np.sqrt(np.abs(mu * mu - m2))
    return (x - mu) / (sd + np.float32(MSCN_C))


def _phi(alpha):
    """Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)): increasing from 0 to 3/4 with the GGD shape a."""
    return special.gamma(2.0 / alpha) ** 2 / (special.gamma(1.0 / alpha) * special.gamma(3.0 / alpha))


_ALPHA_GRID = np.exp(np.linspace(np.log(0.05), np.log(40.0), 4000))
_PHI_GRID = _phi(_ALPHA_GRID)


def _invert_phi(r: np.ndarray) -> np.ndarray:
    """Shape a with phi(a) = r: table interpolation in log a, then 3 Newton steps (phi is monotonic, so this
    is the root scipy.optimize.root finds)."""
    r = np.asarray(r, dtype=float)
    a = np.exp(np.interp(r, _PHI_GRID, np.log(_ALPHA_GRID)))
    for _ in range(3):
        h = 1e-6 * a
        d = (_phi(a + h) - _phi(a - h)) / (2 * h)
        a = np.where(d > 0, a - (_phi(a) - r) / np.where(d > 0, d, 1.0), a)
    return a


def aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian moment fit of each row of ``x`` [n, m] (or of a 1-D ``x``).

    s_l^2 = mean(x^2 | x < 0), s_r^2 = mean(x^2 | x >= 0), g = s_l / s_r, r = mean|x|^2 / mean(x^2),
    R = r (g^3 + 1)(g + 1) / (g^2 + 1)^2, shape a solves phi(a) = R, mean eta = (s_r - s_l)
    Gamma(2/a) / Gamma(1/a) sqrt(Gamma(1/a) / Gamma(3/a)). Returns (a, eta, s_l, s_r) (Lasmar et al. 2009;
    Mittal 2012 eq. 7-9)."""
    x2d = np.atleast_2d(x).reshape(np.atleast_2d(x).shape[0], -1)
    n = x2d.shape[1]
    neg = np.minimum(x2d, 0)
    sq = np.einsum("ij,ij->i", x2d, x2d, dtype=np.float64)
    sq_l = np.einsum("ij,ij->i", neg, neg, dtype=np.float64)
    n_l = np.count_nonzero(neg, axis=1)  # neg != 0 <=> x < 0
    n_r = n - n_l
    abs_sum = x2d.sum(axis=1, dtype=np.float64) - 2.0 * neg.sum(axis=1, dtype=np.float64)  # sum|x|
    with np.errstate(divide="ignore", invalid="ignore"):
        s_l = np.sqrt(sq_l / n_l)
        s_r = np.sqrt((sq - sq_l) / n_r)
        g = s_l / s_r
        r = (abs_sum / n) ** 2 / (sq / n)
        big_r = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    a = _invert_phi(big_r)
    g1, g2, g3 = special.gamma(1 / a), special.gamma(2 / a), special.gamma(3 / a)
    eta = (s_r - s_l) * g2 / g1 * np.sqrt(g1 / g3)
    if np.ndim(x) == 1:
        return a[0], eta[0], s_l[0], s_r[0]
    return a, eta, s_l, s_r


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """Symmetric generalised Gaussian moment fit (Sharifi & Leon-Garcia 1995; Mittal 2012 eq. 2-4): shape a
    with Gamma(1/a) Gamma(3/a) / Gamma(2/a)^2 = mean(x^2) / mean|x|^2, and the variance mean(x^2)."""
    x = np.ravel(x).astype(np.float64)
    var = float(np.mean(x * x))
    a = float(_invert_phi(np.mean(np.abs(x)) ** 2 / var))
    return a, var


def _pairs(m: np.ndarray) -> dict[str, np.ndarray]:
    return {"mscn": m, "horizontal": m[..., :, :-1] * m[..., :, 1:], "vertical": m[..., :-1, :] * m[..., 1:, :],
            "main_diagonal": m[..., :-1, :-1] * m[..., 1:, 1:], "secondary_diagonal": m[..., 1:, :-1] * m[..., :-1, 1:]}


def _scale_features(stack: np.ndarray) -> np.ndarray:
    """18 features per image of a stack [n, y, x] at one scale."""
    out = []
    for name, c in _pairs(mscn(stack)).items():
        a, eta, s_l, s_r = aggd_fit(c.reshape(c.shape[0], -1))
        out += [a, (s_l**2 + s_r**2) / 2] if name == "mscn" else [a, eta, s_l**2, s_r**2]
    return np.stack(out, axis=1)


def downscale2_cubic(stack: np.ndarray) -> np.ndarray:
    """2x down-sampling of the last two axes by bicubic interpolation (Keys a = -0.75 at the half-pixel
    source positions 2i + 0.5, edge replicate, round-half-even(n / 2) output samples: OpenCV's
    ``resize(fx=fy=0.5, INTER_CUBIC)``)."""
    x = np.asarray(stack, dtype=np.float32)
    w = np.array([-0.09375, 0.59375, 0.59375, -0.09375], dtype=np.float32)
    for axis in (-2, -1):
        n = x.shape[axis]
        idx = np.arange(int(np.rint(n / 2))) * 2
        acc = None
        for k, wk in enumerate(w):
            take = np.clip(idx - 1 + k, 0, n - 1)
            part = wk * np.take(x, take, axis=axis)
            acc = part if acc is None else acc + part
        x = acc
    return x


def brisque_features(image: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of one grey image [y, x] in [0, 1] (or of each image of a stack [n, y, x]:
    returns [n, 36]). Order per scale: MSCN (shape, variance), then for the horizontal, vertical, main- and
    secondary-diagonal products (shape, mean, left variance, right variance); scale 1 then scale 1/2."""
    x = np.asarray(image, dtype=np.float32)
    single = x.ndim == 2
    x = x[None] if single else x
    feats = np.concatenate([_scale_features(x), _scale_features(downscale2_cubic(x))], axis=1)
    return feats[0] if single else feats


@lru_cache(maxsize=1)
def load_brisque_model() -> dict:
    """The shipped SVR (libsvm text: header, then 'coef i:v ...' per support vector) and feature ranges."""
    head, svs, coefs = {}, [], []
    lines = (DATA / "brisque_svm.txt").read_text().splitlines()
    i = lines.index("SV")
    for ln in lines[:i]:
        k, _, v = ln.partition(" ")
        head[k] = v
    if head.get("svm_type") != "epsilon_svr" or head.get("kernel_type") != "rbf":
        raise ValueError("brisque_svm.txt: expected an RBF epsilon-SVR")
    for ln in lines[i + 1 :]:
        parts = ln.split()
        if not parts:
            continue
        row = np.zeros(36)
        for p in parts[1:]:
            j, v = p.split(":")
            row[int(j) - 1] = float(v)
        coefs.append(float(parts[0]))
        svs.append(row)
    scale = json.loads((DATA / "brisque_scale.json").read_text())
    return {"sv": np.array(svs), "coef": np.array(coefs), "gamma": float(head["gamma"]), "rho": float(head["rho"]),
            "min": np.array(scale["min"]), "max": np.array(scale["max"])}


def brisque_score_from_features(features: np.ndarray) -> np.ndarray:
    """SVR score of features [36] or [n, 36]: x' = -1 + 2 (x - min) / (max - min),
    score = sum_i coef_i exp(-gamma |x' - sv_i|^2) - rho (libsvm epsilon-SVR prediction)."""
    m = load_brisque_model()
    f = np.atleast_2d(np.asarray(features, dtype=float))
    xs = -1.0 + 2.0 * (f - m["min"]) / (m["max"] - m["min"])
    d2 = (xs**2).sum(1)[:, None] + (m["sv"] ** 2).sum(1)[None, :] - 2.0 * xs @ m["sv"].T
    score = np.exp(-m["gamma"] * np.clip(d2, 0, None)) @ m["coef"] - m["rho"]
    return score[0] if np.ndim(features) == 1 else score


def brisque_score(image: np.ndarray) -> float:
    """BRISQUE score of one grey image [y, x] in [0, 1] (lower = better)."""
    return float(brisque_score_from_features(brisque_features(image)))


# ------------------------------------------------------------------ IQM
def slice_areas(mask: np.ndarray) -> np.ndarray:
    """Approximate per-slice area (pixels) of a [z, y, x] mask from every 4th row and column (16x fewer
    reads; for choosing slices only)."""
    return np.count_nonzero(mask[:, ::4, ::4], axis=(1, 2)) * 16


def body_slices(body_mask: np.ndarray, n: int) -> np.ndarray:
    """At most n slice indices evenly spaced over the slices whose body area is >= 20 % of the largest."""
    area = slice_areas(body_mask)
    if area.max() == 0:
        return np.zeros(0, dtype=int)
    zs = np.nonzero(area >= 0.2 * area.max())[0]
    return zs if zs.size <= n else zs[np.linspace(0, zs.size - 1, n).round().astype(int)]


@register_iqm(
    unit="1",
    direction="lower_is_better",
    formula="mean over <= 8 evenly spaced body slices of SVR(36 BRISQUE features of the slice in the soft-tissue "
    "window W400/L40 (-160..240 HU -> 0..255), cropped to the body's bounding box)",
    reference=MITTAL2012,
)
def brisque_soft_tissue(hu, body_mask):
    """BRISQUE no-reference perceptual quality score of the soft-tissue-windowed slices (lower is better).

    Each of at most 8 slices, evenly spaced over the slices holding at least 20 % of the largest body
    cross-section, is windowed to W400/L40, quantised to 8 bits and cropped to the bounding box of the body
    on those slices (one box for all: the air around the patient is not image content); the per-slice scores
    are averaged. The score is the natural-image SVR's: it ranks noise and blur, its absolute value has no
    radiological calibration."""
    zs = body_slices(body_mask, BRISQUE_MAX_SLICES)
    if zs.size == 0:
        return None
    sel = body_mask[zs]
    rows = np.nonzero(sel.any(axis=(0, 2)))[0]
    cols = np.nonzero(sel.any(axis=(0, 1)))[0]
    if rows.size < 32 or cols.size < 32:
        return None
    # features are per slice: two slices at a time keep the float32 feature maps small (peak memory)
    feats = [brisque_features(window_to_unit(hu[zs[i : i + 2], rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))
             for i in range(0, zs.size, 2)]
    scores = brisque_score_from_features(np.concatenate(feats))
    return float(np.mean(scores))
