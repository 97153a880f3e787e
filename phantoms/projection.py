"""Projection-domain acquisition: parallel-beam forward projection, Poisson photon noise, log, filtered
back-projection (FBP), and artifacts that arise in the projections.

Model, per axial slice (skimage ``radon``/``iradon``, parallel beam over 180 degrees):

* attenuation mu = mu_w (1 + HU/1000), mu_w = 0.0195 /mm (water at ~70 keV effective energy, 120 kVp);
* line integrals p = sum(mu) * pixel; expected counts N = I0 exp(-p), I0 = photons per ray per view,
  proportional to mAs and slice thickness (``PHOTONS_PER_MAS_5MM``; calibrated so that a 23 cm WED chest at
  100 mAs, 5 mm, smooth kernel has ~6 HU and an 18 cm head at 400 mAs, 2.5 mm ~6 HU); measured counts ~ Poisson(N) (Gaussian approximation
  N + sqrt(N) z with one z per ray, so that two acquisitions of the same seed share their noise draws);
  p_meas = -ln(max(N_meas, 1) / I0);
* FBP with a smooth (Hann-apodised ramp, soft-tissue) or sharp (plain ramp, lung/bone) kernel.

Noise therefore has a real CT texture (ramp-shaped NPS), its SD scales as 1/sqrt(mAs) and grows with
patient size (fewer photons through larger patients).

Artifacts (severity s in 0..1), applied to the sinogram:

* ``metal``: a dense object (steel-like, mu = 30 mu_w) whose path adds beam hardening
  (p -= 0.02 s' p_metal^2) and photon starvation (it is in p, so N collapses behind it);
* ``beam_hardening``: posterior-fossa style streaks: p -= 0.05 s p_bone^2 (p_bone: line integral of the
  bone excess attenuation; dense bone
  paths are under-estimated, dark streaks between them);
* ``ring``: gain error of 3 detector channels (N * (1 + 0.05 s)) in every view -> rings;
* ``motion``: rigid translation growing linearly over the rotation up to 6 s mm, applied as a shift of each
  view's projection by dx cos(theta) + dy sin(theta) (exact for parallel-beam translations);
* ``truncation``: projection bins beyond the scan field of view (a radius shrunk by up to 30 % s of the
  body's half-width) are lost, as when the body extends beyond the reconstruction circle.
"""

from __future__ import annotations

import numpy as np

MU_WATER = 0.0195  # 1/mm
PHOTONS_PER_MAS_5MM = 2500.0  # photons per ray per view per mAs for a 5 mm slice (proportional to slice thickness)
FBP_FILTERS = {"smooth": "hann", "sharp": "ramp"}
ARTIFACTS = ("metal", "beam_hardening", "ring", "motion", "truncation")


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    return np.clip(MU_WATER * (1.0 + hu / 1000.0), 0.0, None)


def mu_to_hu(mu: np.ndarray) -> np.ndarray:
    return 1000.0 * (mu / MU_WATER - 1.0)


def n_views(n: int) -> int:
    return max(180, int(round(n * 1.0)))


def forward(mu_slice: np.ndarray, pixel_mm: float, theta: np.ndarray) -> np.ndarray:
    from skimage.transform import radon

    return radon(mu_slice, theta=theta, circle=True, preserve_range=True) * pixel_mm


def fbp(sino: np.ndarray, pixel_mm: float, theta: np.ndarray, kernel: str, size: int) -> np.ndarray:
    from skimage.transform import iradon

    return iradon(sino / pixel_mm, theta=theta, filter_name=FBP_FILTERS[kernel], circle=True, output_size=size)


def _shift_rows(sino: np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    out = np.empty_like(sino)
    t = np.arange(sino.shape[0], dtype=float)
    for j in range(sino.shape[1]):
        out[:, j] = np.interp(t - shifts_px[j], t, sino[:, j], left=0.0, right=0.0)
    return out


def acquire_slice(hu_slice: np.ndarray, pixel_mm: float, mas: float, kernel: str, z: np.ndarray,
                  artifacts: dict | None = None, bone_hu: float = 300.0, metal_mask: np.ndarray | None = None,
                  slice_mm: float = 5.0):
    """One slice through the projection model. ``z`` are standard-normal draws shaped like the sinogram
    (shared between acquisitions of the same seed). Returns (noisy HU, noise-free HU), both reconstructed
    with the same kernel and artifacts; the noise-free one uses the expected counts."""
    artifacts = artifacts or {}
    n = hu_slice.shape[0]
    theta = np.linspace(0.0, 180.0, n_views(n), endpoint=False)
    mu = hu_to_mu(hu_slice)
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)
    mu[r > n / 2 - 1] = 0.0  # the reconstruction circle
    if metal_mask is not None and metal_mask.any() and "metal" in artifacts:
        mu = np.where(metal_mask, 30.0 * MU_WATER, mu)
    p = forward(mu, pixel_mm, theta)
    s = artifacts.get("beam_hardening", 0.0)
    if s > 0:
        bone = np.where(hu_slice > bone_hu, mu - MU_WATER, 0.0)
        pb = forward(bone, pixel_mm, theta)
        p = p - 0.05 * s * pb**2
    s = artifacts.get("metal", 0.0)
    if s > 0 and metal_mask is not None and metal_mask.any():
        pm = forward(np.where(metal_mask, 30.0 * MU_WATER, 0.0), pixel_mm, theta)
        p = p - 0.02 * s * pm**2
    s = artifacts.get("motion", 0.0)
    if s > 0:
        frac = np.linspace(0.0, 1.0, len(theta))
        dx, dy = 6.0 * s * frac / pixel_mm, 3.0 * s * frac / pixel_mm
        th = np.radians(theta)
        p = _shift_rows(p, dx * np.cos(th) + dy * np.sin(th))
    i0 = PHOTONS_PER_MAS_5MM * mas * slice_mm / 5.0
    expected = i0 * np.exp(-p)
    s = artifacts.get("ring", 0.0)
    gain = np.ones(p.shape[0])
    if s > 0:
        centre = p.shape[0] // 2
        for off in (int(0.12 * n), int(0.23 * n), -int(0.31 * n)):
            gain[centre + off] = 1.0 + 0.05 * s
    measured = np.maximum(expected + np.sqrt(expected) * z, 1.0) * gain[:, None]
    p_noisy = -np.log(measured / i0)
    p_clean = -np.log(expected * gain[:, None] / i0)
    s = artifacts.get("truncation", 0.0)
    if s > 0:
        t = np.arange(p.shape[0]) - (p.shape[0] - 1) / 2
        body_half = np.max(np.abs(t[(p > 0.05).any(axis=1)])) if (p > 0.05).any() else n / 2
        keep = np.abs(t) <= body_half * (1.0 - 0.3 * s)
        p_noisy[~keep] = 0.0
        p_clean[~keep] = 0.0
    noisy = mu_to_hu(fbp(p_noisy, pixel_mm, theta, kernel, n))
    clean = mu_to_hu(fbp(p_clean, pixel_mm, theta, kernel, n))
    return noisy.astype(np.float32), clean.astype(np.float32)


def sinogram_shape(n: int) -> tuple[int, int]:
    return (n, n_views(n))
