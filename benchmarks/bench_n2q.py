"""Noise2Quality volume inference time on a 512 x 512 x 300 chest (issue 9 budget: < 1 s on CPU).

The volume: a simulated 512-matrix chest slab (``phantoms.simulate('chest', seed=1, matrix=512)``, 12 slices of
1.25 mm around the carina) tiled to 300 slices as float32 HU (the timing does not depend on the anatomy of the
slices outside the 3 central ones; building a true 300-slice phantom takes ~90 s). Times
:func:`detectors.noise2quality.predict_volume` (slice choice + windowing + resampling to 256 + body masks +
the network on 3 slices), best of ``--repeat``, wall and process CPU seconds, with ``--threads`` torch threads.

    python benchmarks/bench_n2q.py [--threads 1] [--repeat 5] [--weights FILE.safetensors]

Measured 2026-11-29 (shipped weights, load average 3.7 on 2 cores from other jobs): 0.19 s wall, 0.19 s CPU (budget
1 s), the same with ``--threads 1`` or ``2`` since the network runs on one thread (before that: 0.98 s with 2 threads
on the loaded machine, 0.18 s with 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--weights", default="", help="a safetensors file instead of the shipped weights")
    args = ap.parse_args()
    import torch

    from detectors import noise2quality as n2q
    from phantoms import simulate

    torch.set_num_threads(args.threads)
    if args.weights:
        from detectors.weights import load_user_checkpoint

        model = n2q.model_from_state(load_user_checkpoint(Path(args.weights)))
    else:
        model = n2q.shipped_model()
        if model is None:
            raise SystemExit("no shipped noise2quality weights: run `qc train n2q` or pass --weights")
    ph = simulate("chest", seed=1, matrix=512, slice_mm=1.25, z_start=-7.5, z_end=6.25)
    slab = ph.scan.hu.astype(np.float32)
    hu = np.ascontiguousarray(np.concatenate([slab] * (300 // slab.shape[0] + 1))[:300])
    print(f"volume {hu.shape} {hu.dtype}, spacing {ph.scan.spacing}; torch threads {torch.get_num_threads()}")
    n2q.predict_volume(hu, ph.scan.spacing, model=model)  # warm-up (first call allocates)
    best, best_cpu, out = np.inf, np.inf, None
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        out = n2q.predict_volume(hu, ph.scan.spacing, model=model)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    print(f"predict_volume: {best:.3f} s wall, {best_cpu:.3f} s cpu (best of {args.repeat}); "
          f"mean_ssim {out['mean_ssim']:.3f}, dose_level_pct {out['dose_level_pct']:.1f}")
    print(f"load average during the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
