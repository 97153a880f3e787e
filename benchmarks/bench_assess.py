"""Benchmark: `qc assess` time / volume load time on a 512 x 512 x 300 simulated chest CT.

Run: python benchmarks/bench_assess.py [--slices 300] [--repeat 2]
Prints the ratio measured in this run (both timed on the same machine, same file), and per-stage times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from phantoms import simulate, write_phantom
    from qc.io import load_scan
    from qc.pipeline import assess

    t = time.perf_counter()
    z_top = 100.0
    ph = simulate("chest", seed=0, matrix=512, slice_mm=1.0, z_start=z_top - args.slices + 1, z_end=z_top)
    sim_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        path = write_phantom(ph, Path(d))["scan"]
        shape = ph.scan.shape
        del ph
        load_s, assess_s, stages = [], [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            load_scan(path)
            load_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = assess(path)
            assess_s.append(time.perf_counter() - t)
            stages = r.timings_s
    lo, asv = min(load_s), min(assess_s)
    print(f"volume {shape[2]}x{shape[1]}x{shape[0]} (x*y*z), simulated in {sim_s:.1f} s")
    print(f"load   {lo:.2f} s (best of {args.repeat})")
    print(f"assess {asv:.2f} s (best of {args.repeat}; includes load) stages: {stages}")
    print(f"ratio assess/load = {asv / lo:.2f}")


if __name__ == "__main__":
    main()
