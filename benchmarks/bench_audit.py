"""Benchmark: `qc audit` throughput with 1 vs 2 Dask workers, and store size per scan.

Run: python benchmarks/bench_audit.py [--n 100] [--workers 1,2] [--matrix 128]
Simulates N scans (head/chest alternating, matrix 128, NIfTI + sidecar, varied positioning and dose), then
audits the same folder into a fresh store once per worker count (LocalCluster, one process per worker,
one thread each). Prints, for each: wall time (discovery + cluster start + assessment + store writes),
scans/hour (also without discovery and cluster start), store bytes per scan (total, and above an empty
store: DuckDB allocates 256 kB blocks, so small stores are mostly fixed overhead), the reasons of any
failed scans; then the scaling ratio (scans/hour at the largest worker count
divided by scans/hour with 1 worker). All numbers come from this one run on this machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def make_inputs(root: Path, n: int, matrix: int) -> None:
    import numpy as np

    from phantoms import simulate, write_phantom

    rng = np.random.default_rng(0)
    for i in range(n):
        reg = ("head", "chest")[i % 2]
        kw = {"shift_x": float(rng.normal(0, 10)), "shift_y": float(rng.normal(0, 15)),
              "dose_fraction": float(rng.choice([0.25, 0.5, 1.0]))}
        paths = write_phantom(simulate(reg, seed=1000 + i, matrix=matrix, **kw), root / f"{reg}_{i:04d}")
        for k in ("labels", "truth", "artifact_mask"):  # keep only the scan (+ sidecar) per folder
            if k in paths:
                paths[k].unlink()


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + ".wal")) if p.exists())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--matrix", type=int, default=128)
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    from qc.audit import run_audit
    from qc.store import Store

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "scans"
        t = time.perf_counter()
        make_inputs(root, args.n, args.matrix)
        print(f"{args.n} scans simulated (matrix {args.matrix}, head/chest) in {time.perf_counter() - t:.1f} s; "
              f"{os.cpu_count()} CPU core(s)")
        empty = Path(d) / "empty.duckdb"
        Store(empty).close()
        base = store_bytes(empty)
        rates = {}
        for w in counts:
            store = Path(d) / f"audit_w{w}.duckdb"
            s = run_audit([root], store, workers=w, progress=False)
            with Store(store, read_only=True) as st:
                c = st.counts()
                reasons = st.df("SELECT error_type, split_part(reason, ':', 1) AS reason, count(*) n FROM errors "
                                "GROUP BY ALL ORDER BY n DESC")
            size = store_bytes(store)
            rates[w] = 3600 * args.n / s.seconds
            work = s.seconds - s.discover_seconds - s.cluster_seconds
            n = max(c["scans"], 1)
            print(f"workers {w}: {s.seconds:.1f} s for {args.n} scans ({s.n_ok} ok, {s.n_failed} failed) = "
                  f"{rates[w]:.0f} scans/hour (discovery {s.discover_seconds:.1f} s, cluster start "
                  f"{s.cluster_seconds:.1f} s; without those {3600 * args.n / work:.0f} scans/hour)")
            print(f"    store {size / 1e6:.2f} MB = {size / n:.0f} bytes/scan; above an empty store "
                  f"({base / 1e3:.0f} kB) {(size - base) / n:.0f} bytes/scan ({c['iqms']} IQM rows, "
                  f"{c['scores']} score rows)")
            for _, r in reasons.iterrows():
                print(f"    failed x{r['n']}: {r['error_type']}: {r['reason'][:100]}")
        if 1 in rates and len(rates) > 1:
            top = max(rates)
            print(f"scaling {top} vs 1 worker(s): {rates[top] / rates[1]:.2f}x (ideal {top}.00x)")


if __name__ == "__main__":
    main()
