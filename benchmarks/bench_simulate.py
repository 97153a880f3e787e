"""Benchmark the simulator: seconds per 256^2 x 64 and 512^2 x 300 scan, image vs projection mode, and the
statistical match of the two modes (noise SD and NPS mean frequency).

Run: python benchmarks/bench_simulate.py [--full]   (without --full, the 512^2 x 300 projection time is
extrapolated from 8 slices: the projection mode costs the same for every slice.)
"""

from __future__ import annotations

import argparse
import time


def _time(**kw) -> tuple[float, object]:
    from phantoms import simulate

    t = time.perf_counter()
    ph = simulate(**kw)
    return time.perf_counter() - t, ph


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="run the 512^2 x 300 projection scan for real (~20 min)")
    args = ap.parse_args()
    from metrics.noise import nps_mean_frequency

    print("| scan | image mode (s) | projection mode (s) |")
    print("|---|---|---|")
    for matrix, n_slices in ((256, 64), (512, 300)):
        slice_mm = 2.0
        z = dict(z_start=-60.0, z_end=-60.0 + (n_slices - 1) * slice_mm, slice_mm=slice_mm)
        t_img, ph = _time(region="chest", seed=0, matrix=matrix, mode="image", **z)
        assert ph.scan.shape == (n_slices, matrix, matrix), ph.scan.shape
        if args.full or n_slices <= 64:
            t_proj, _ = _time(region="chest", seed=0, matrix=matrix, mode="projection", **z)
            note = ""
        else:
            zs = dict(z_start=-60.0, z_end=-60.0 + 7 * slice_mm, slice_mm=slice_mm)
            t8, _ = _time(region="chest", seed=0, matrix=matrix, mode="projection", **zs)
            t_proj, note = t8 / 8 * n_slices, " (extrapolated from 8 slices)"
        print(f"| {matrix}^2 x {n_slices} | {t_img:.1f} | {t_proj:.1f}{note} |")

    print("\n| region | kernel | SD image | SD projection | NPS mean f image (1/mm) | NPS mean f projection |")
    print("|---|---|---|---|---|---|")
    slabs = {"head": dict(z_start=10.0, z_end=15.0), "chest": dict(z_start=-90.0, z_end=-80.0)}
    for region in ("head", "chest"):
        for kernel in ("smooth", "sharp"):
            row = []
            for mode in ("image", "projection"):
                _t, ph = _time(region=region, seed=11, mode=mode, kernel=kernel, **slabs[region])
                row.append((ph.truth["noise_sd_hu"], nps_mean_frequency(ph.scan.hu - ph.noise_free, ph.truth["pixel_mm"])))
            print(f"| {region} | {kernel} | {row[0][0]:.2f} | {row[1][0]:.2f} | {row[0][1]:.3f} | {row[1][1]:.3f} |")


if __name__ == "__main__":
    main()
