"""Accuracy of the SNR, BRISQUE, edge-f50 and chest-ROI-noise IQMs against their ground truths (prints a table).

    python benchmarks/bench_perceptual_accuracy.py      (~1 min on 2 cores)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


def main():
    from metrics import noise as N
    from metrics.perceptual import brisque_soft_tissue
    from metrics.sharpness import edge_mtf50_per_mm
    from phantoms import simulate
    from phantoms.simulate import KERNELS, shaped_noise
    from qc.pipeline import compute_masks

    rng = np.random.default_rng(1)
    print("SNR, uniform 40 HU cylinder, noise SD 20 HU (truth 1064/20 = 53.2)")
    for px in (0.98, 1.95):
        for window in ("hann", "ramp"):
            n = int(375 / px)
            yy, xx = np.mgrid[:n, :n]
            body = np.broadcast_to(np.hypot(yy - n / 2, xx - n / 2) * px < 165, (6, n, n)).copy()
            hu = np.where(body, 40.0 + 20.0 * shaped_noise((6, n, n), window, rng), -1000.0).astype(np.float32)
            got = N.snr_subvolume_mean(hu, (5.0, px, px), body)
            print(f"  pixel {px} mm {window:5s}: {got:7.2f}  ({100 * (got / 53.2 - 1):+.1f} %)")
    print("SNR ratio 100 / 25 mAs, chest phantom (truth 2)")
    for kernel in ("smooth", "sharp"):
        v = {}
        for mas in (25, 100):
            ph = simulate("chest", seed=2, mas=mas, kernel=kernel, z_start=-80.0, z_end=-20.0)
            v[mas] = N.snr_subvolume_mean(ph.scan.hu, ph.scan.spacing, compute_masks(ph.scan)["body_mask"])
        print(f"  {kernel:6s}: {v[100] / v[25]:.3f}")

    print("f50 of a disc blurred with a Gaussian PSF (truth sqrt(ln2/2)/(pi sigma))")
    for px in (0.5, 0.8, 1.0, 2.0):
        for sigma in (0.4, 0.7, 1.0):
            n = int(340 / px)
            yy, xx = np.mgrid[:n, :n]
            r = np.hypot((yy - 0.45 * n) * px, (xx - 0.55 * n) * px)
            clean = -1000.0 + 1040.0 * 0.5 * special.erfc((r - 140.0) / (np.sqrt(2) * sigma))
            hu = np.stack([clean + rng.normal(0, 15, clean.shape) for _ in range(2)]).astype(np.float32)
            got = edge_mtf50_per_mm(hu, (5.0, px, px), np.stack([r < 140.0] * 2))
            truth = np.sqrt(np.log(2) / 2) / (np.pi * sigma)
            err = "None" if got is None else f"{got:.4f} ({100 * (got / truth - 1):+.1f} %)"
            print(f"  pixel {px} mm sigma {sigma} mm: truth {truth:.4f}, got {err}")
    print("f50 on phantoms (image mode: Gaussian kernel PSF; projection mode: FBP, no closed-form truth)")
    for region, mode, matrix, zr in (("head", "image", 512, (10, 15)), ("chest", "image", 512, (-60, -50)),
                                     ("chest", "projection", 256, (-60, -50))):
        for kernel in ("smooth", "sharp"):
            ph = simulate(region, seed=3, matrix=matrix, kernel=kernel, mode=mode, z_start=zr[0], z_end=zr[1])
            got = edge_mtf50_per_mm(ph.scan.hu, ph.scan.spacing, compute_masks(ph.scan)["body_mask"])
            truth = np.sqrt(np.log(2) / 2) / (np.pi * KERNELS[kernel][0])
            print(f"  {region} {mode} {matrix} {kernel}: got {got}, PSF truth {truth:.4f}" +
                  ("" if mode == "image" else " (n/a)"))

    print("BRISQUE (soft-tissue window) vs blur and added noise, chest phantom 512")
    ph = simulate("chest", seed=3, matrix=512, z_start=-60.0, z_end=-50.0)
    body = compute_masks(ph.scan)["body_mask"]
    print("  blur sigma 0/0.7/1.4/2.1 px:",
          [round(brisque_soft_tissue(ndi.gaussian_filter(ph.scan.hu, (0, s, s)) if s else ph.scan.hu, body), 1)
           for s in (0, 0.7, 1.4, 2.1)])
    unit = shaped_noise(ph.noise_free.shape, "hann", np.random.default_rng(0)).astype(np.float32)
    print("  noise-free + 0/5/10/20/40 HU:",
          [round(brisque_soft_tissue(ph.noise_free + s * unit, body), 1) for s in (0, 5, 10, 20, 40)])

    print("Chest ROI noise vs the noise field in the same ROI")
    for kw in (dict(seed=3), dict(seed=2, kernel="sharp"), dict(seed=5, mas=30.0), dict(seed=7, arms_up=False),
               dict(seed=6, mode="projection", z_start=-80.0, z_end=40.0)):
        ph = simulate("chest", **kw)
        s, m = ph.scan, compute_masks(ph.scan)
        field = s.hu - ph.noise_free
        for name, roi_fn, iqm in (("trachea", N.tracheal_air_roi, N.noise_sd_tracheal_air_hu),
                                  ("blood", N.mediastinal_blood_roi, N.noise_sd_mediastinal_blood_hu)):
            roi = roi_fn(s.hu, s.spacing, m["body_mask"], m["lung_mask"])
            got = iqm(s.hu, s.spacing, m["body_mask"], m["lung_mask"])
            truth = float(field[roi].std()) if roi.any() else float("nan")
            err = "None" if got is None else f"{got:.2f} ({100 * (got / truth - 1):+.1f} %)"
            print(f"  {kw} {name}: truth {truth:.2f}, got {err}")


if __name__ == "__main__":
    main()
