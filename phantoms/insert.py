"""Noise insertion into real scans: simulate a lower dose of a real CT with known added noise.

Projection-domain method (after Yu et al., Med Phys 2012, "Development and validation of a practical
lower-dose-simulation tool"): each slice is forward projected (parallel beam); with I0 the photons per
ray of the original acquisition (``PHOTONS_PER_MAS_5MM`` x mAs x slice/5 mm, mAs from the header or
given), the original line-integral variance is exp(p)/I0; a dose fraction f needs an extra variance of
(1/f - 1) exp(p)/I0, drawn as Gaussian noise in the sinogram and reconstructed by FBP with the chosen
kernel. The reconstructed noise image is added to the original HU, so the anatomy is real and the added
noise is known exactly (returned as truth).
"""

from __future__ import annotations

import numpy as np

from phantoms import projection


def insert_noise(scan, dose_fraction: float, seed: int = 0, mas: float | None = None, kernel: str = "smooth",
                 slices: list[int] | None = None):
    """Return (lower-dose Scan, added-noise HU volume, truth dict). ``slices`` limits the work to some slices
    (others are copied unchanged and get zero added noise)."""
    from qc.io import Scan

    if not 0.0 < dose_fraction < 1.0:
        raise ValueError("dose_fraction must be in (0, 1)")
    mas = float(mas if mas is not None else scan.metadata.get("ExposureMAs", 200.0))
    slice_mm = float(scan.spacing[0])
    px = float(scan.spacing[2])
    i0 = projection.PHOTONS_PER_MAS_5MM * mas * slice_mm / 5.0
    rng = np.random.default_rng(seed)
    nz, ny, nx = scan.shape
    n = max(ny, nx)
    theta = np.linspace(0.0, 180.0, projection.n_views(n), endpoint=False)
    added = np.zeros(scan.shape, dtype=np.float32)
    ks = range(nz) if slices is None else slices
    yy, xx = np.mgrid[:n, :n]
    circle = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) <= n / 2 - 1
    for k in ks:
        img = np.full((n, n), -1000.0)
        img[:ny, :nx] = np.where(scan.fov[k], scan.hu[k], -1000.0)
        mu = projection.hu_to_mu(img) * circle
        p = projection.forward(mu, px, theta)
        var_add = (1.0 / dose_fraction - 1.0) * np.exp(p) / i0
        noise_sino = np.sqrt(var_add) * rng.standard_normal(p.shape)
        noise_img = projection.fbp(noise_sino, px, theta, kernel, n) * 1000.0 / projection.MU_WATER
        added[k] = noise_img[:ny, :nx] * scan.fov[k]
    out = Scan(hu=scan.hu + added, spacing=scan.spacing, origin=scan.origin, direction=scan.direction,
               metadata={**scan.metadata, "ExposureMAs": mas * dose_fraction}, fov=scan.fov.copy(),
               source=f"{scan.source} (dose x{dose_fraction:g})")
    truth = {"dose_fraction": dose_fraction, "original_mas": mas, "simulated_mas": mas * dose_fraction,
             "slices": list(ks), "kernel": kernel, "seed": seed}
    return out, added, truth
