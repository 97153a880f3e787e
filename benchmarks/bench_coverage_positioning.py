"""Benchmark: coverage, lens and positioning IQMs over many random simulated scans (accuracy near the decision
boundaries, which the unit tests avoid), and their speed on a 512 x 512 x 300 chest / 512 x 512 head.

Run: python benchmarks/bench_coverage_positioning.py PART [--n N] [--matrix M] [--seed S]
PART: lens | head | chest | om | arms | timing. Prints one line per case and a summary line.

* lens  - (measured 2026-11-29, --n 100 --seed 7: matrix 256 0.980, matrix 128 1.000 correct vs simulator truth;
          extent MAE 0.20 / 0.23 mm) heads with random pitch/yaw/roll, scan start (85 %) or end (15 %) near the eyes: lens_in_scan_range vs
          the simulator's lens_in_scan (lens voxels in the labels) and vs the geometric overlap of the lens
          ellipsoid with the range; lens_extent_in_range_mm vs that overlap.
* head  - heads with random pitch (+-15), yaw (+-10), roll (+-8), start around the foramen magnum (-30..+25 mm),
          end around the vertex (-25..+25 mm): cut detection and margin error of vertex/skull-base margins.
* chest - chests with random yaw, start around the bases, end around the apices: apex/base margins.
* om    - heads with random pitch (+-20), yaw, roll: orbitomeatal_angle_deg vs the landmark geometry.
* arms  - chests with arms up / down (slim seeds: the only ones whose lowered arms fit the field): AUC, accuracy.
* timing- each new/changed IQM on a 512 x 512 x 300 chest (seed 1, 1 mm slices) and a 512 x 512 head.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

LENS_SEMI_AXES = (4.5, 2.2, 4.5)
ARMS_DOWN_SEEDS = [29, 34, 53, 65, 85, 126, 142, 150, 184, 195, 230, 239, 279, 285, 326, 337, 383, 389, 391]


def _call(fn, avail):
    return fn(**{p: avail[p] for p in inspect.signature(fn).parameters})


def _avail(scan, masks, region):
    from qc.pipeline import isocenter_index

    return dict(hu=scan.hu, spacing=scan.spacing, z_positions=scan.z_positions_mm(), region=region,
                isocenter_xy=isocenter_index(scan), metadata=scan.metadata, fov=scan.fov, **masks)


def head_geometry(seed, yaw, pitch, roll):
    from phantoms import anatomy

    shape = anatomy.HeadShape.random(np.random.default_rng(seed))
    rot = anatomy.rotation_matrix(yaw, pitch, roll)
    outer = shape.skin_axes - 5.0
    eam = np.mean([rot @ np.array([sx * (outer[0] - 4), 0.05 * shape.skin_axes[1], shape.skull_base_z + 6]) for sx in (-1, 1)], axis=0)
    globe = np.mean([rot @ (c + np.array([0, 11.0, 0])) for c in shape.lens_centres], axis=0)
    d = globe - eam
    return dict(vertex=anatomy.ellipsoid_z_extent(shape.skin_axes, rot),
                fm=float((rot @ np.array([0.0, 0.3 * shape.inner_axes[1], shape.skull_base_z]))[2]),
                lens=[float((rot @ c)[2]) for c in shape.lens_centres], lens_half=anatomy.ellipsoid_z_extent(LENS_SEMI_AXES, rot),
                om=float(np.degrees(np.arctan2(-d[2], np.hypot(d[0], d[1])))))


def part_lens(n, matrix, seed0):
    from metrics import radiation as R
    from phantoms import simulate
    from qc.pipeline import compute_masks

    rng = np.random.default_rng(seed0)
    rows = []
    for i in range(n):
        seed = int(rng.integers(0, 10000))
        pitch, yaw, roll = rng.uniform(-15, 15), rng.uniform(-8, 8), rng.uniform(-6, 6)
        g = head_geometry(seed, yaw, pitch, roll)
        if rng.random() < 0.85:
            z_start, z_end = float(np.mean(g["lens"]) + rng.uniform(-35, 20)), None
        else:
            z_end = float(np.mean(g["lens"]) + rng.uniform(-20, 20))
            z_start = z_end - 80.0
        ph = simulate("head", seed=seed, matrix=matrix, pitch=pitch, yaw=yaw, roll=roll, z_start=z_start, z_end=z_end)
        lo, hi = ph.truth["scan_bottom_mm"], ph.truth["scan_top_mm"]
        geo = max(max(0.0, min(hi, c + g["lens_half"]) - max(lo, c - g["lens_half"])) for c in g["lens"])
        av = _avail(ph.scan, compute_masks(ph.scan), "head")
        got_in, got_ext = _call(R.lens_in_scan_range, av), _call(R.lens_extent_in_range_mm, av)
        rows.append((ph.truth["lens_in_scan"], geo, got_in, got_ext))
        print(f"{i:3d} seed {seed:5d} pitch {pitch:6.1f} | truth in {ph.truth['lens_in_scan']!s:5} overlap {geo:5.2f} | "
              f"got {got_in} {got_ext if got_ext is None else round(got_ext, 2)}", flush=True)
    meas = [r for r in rows if r[2] is not None]
    acc = np.mean([(r[2] == 1.0) == r[0] for r in meas])
    acc_geo = np.mean([(r[2] == 1.0) == (r[1] > 0) for r in meas])
    err = np.array([r[3] - r[1] for r in meas])
    print(f"SUMMARY lens (matrix {matrix}): n={n}, measured {len(meas)} (None: no cranial cavity in the scan); "
          f"lens_in_scan_range correct vs simulator truth {acc:.3f}, vs geometric overlap > 0 {acc_geo:.3f}; "
          f"lens_extent_in_range_mm MAE {np.mean(np.abs(err)):.2f} mm, max {np.max(np.abs(err)):.2f} mm")


def _coverage(region, n, matrix, seed0):
    from metrics import coverage as C
    from metrics import dose as D
    from phantoms import anatomy, simulate
    from qc.pipeline import compute_masks

    rng = np.random.default_rng(seed0)
    keys = ([("vertex_margin_mm", "vertex_in_scan"), ("skull_base_margin_mm", "skull_base_in_scan")] if region == "head"
            else [("lung_apex_margin_mm", "apex_in_scan"), ("lung_base_margin_mm", "base_in_scan")])
    res = {k: [] for k, _ in keys}
    excess_err = []
    for i in range(n):
        seed = int(rng.integers(0, 10000))
        if region == "head":
            pitch, yaw, roll = rng.uniform(-15, 15), rng.uniform(-10, 10), rng.uniform(-8, 8)
            g = head_geometry(seed, yaw, pitch, roll)
            z0, z1 = g["fm"] + rng.uniform(-30, 25), g["vertex"] + rng.uniform(-25, 25)
            ph = simulate("head", seed=seed, matrix=matrix, yaw=yaw, pitch=pitch, roll=roll, z_start=z0, z_end=z1)
            desc = f"pitch {pitch:6.1f} yaw {yaw:5.1f} roll {roll:5.1f}"
        else:
            yaw = rng.uniform(-10, 10)
            shape = anatomy.ChestShape.random(np.random.default_rng(seed))
            z0, z1 = shape.base_z + rng.uniform(-30, 25), shape.apex_z + rng.uniform(-25, 25)
            ph = simulate("chest", seed=seed, matrix=matrix, yaw=yaw, z_start=z0, z_end=z1)
            desc = f"yaw {yaw:5.1f}"
        av = _avail(ph.scan, compute_masks(ph.scan), region)
        line = f"{i:3d} seed {seed:5d} {desc}"
        margins = []
        for iqm, in_key in keys:
            got = _call(getattr(C, iqm), av)
            truth, t_in = ph.truth[iqm], ph.truth[in_key]
            res[iqm].append((got, truth, t_in))
            margins.append(truth)
            wrong = ((got or 0) > 0) != t_in
            line += f" | {iqm} truth {truth:7.2f} got {got if got is None else round(got, 2)}{' WRONG' if wrong else ''}"
        ex = _call(D.excess_scan_length_mm, av)
        ex_t = sum(max(0.0, m - 10.0) for m in margins)
        excess_err.append(ex - ex_t)
        print(line + f" | excess truth {ex_t:6.2f} got {ex:6.2f}", flush=True)
    half = ph.truth["slice_mm"] / 2
    for iqm, _ in keys:
        r = res[iqm]
        ok = [((g or 0) > 0) == t for g, _m, t in r]
        band = [((g or 0) > 0) == t for g, m, t in r if abs(m) > half]
        band3 = [((g or 0) > 0) == t for g, m, t in r if abs(m) > 3.0]
        err = np.array([g - m for g, m, t in r if t and g is not None])
        print(f"SUMMARY {iqm} ({region}, matrix {matrix}): n={n}, cut detection correct {np.mean(ok):.3f} "
              f"(|truth margin| > slice/2: {np.mean(band):.3f} of {len(band)}; > 3 mm: {np.mean(band3):.3f} of {len(band3)}); "
              f"margin where included: MAE {np.mean(np.abs(err)):.2f} mm, within 3 mm {np.mean(np.abs(err) <= 3):.3f}, "
              f"max {np.max(np.abs(err)):.2f} mm")
    e = np.abs(excess_err)
    print(f"SUMMARY excess_scan_length_mm ({region}): MAE {e.mean():.2f} mm, within 3 mm {np.mean(e <= 3):.3f}, max {e.max():.2f} mm")


def part_om(n, matrix, seed0):
    from metrics import positioning as P
    from phantoms import simulate
    from qc.pipeline import compute_masks

    rng = np.random.default_rng(seed0)
    errs, offsets, pca_errs = [], [], []
    none = 0
    for i in range(n):
        seed = int(rng.integers(0, 10000))
        pitch, yaw, roll = rng.uniform(-20, 20), rng.uniform(-10, 10), rng.uniform(-8, 8)
        ph = simulate("head", seed=seed, matrix=matrix, pitch=pitch, yaw=yaw, roll=roll)
        av = _avail(ph.scan, compute_masks(ph.scan), "head")
        got, truth = _call(P.orbitomeatal_angle_deg, av), head_geometry(seed, yaw, pitch, roll)["om"]
        pca = _call(P.head_pitch_deg, av)
        offsets.append(truth - pitch)
        pca_errs.append(pca - pitch)
        if got is None:
            none += 1
        else:
            errs.append(got - truth)
        print(f"{i:3d} seed {seed:5d} pitch {pitch:6.1f} yaw {yaw:5.1f} roll {roll:5.1f} | OM truth {truth:6.2f} got "
              f"{got if got is None else round(got, 2)} | head_pitch_deg {pca:6.2f}", flush=True)
    e = np.abs(errs)
    print(f"SUMMARY orbitomeatal_angle_deg (matrix {matrix}): n={n}, not measured {none}; MAE {e.mean():.2f} deg, "
          f"within 2 deg {np.mean(e <= 2):.3f}, max {e.max():.2f}; phantom OM line = pitch {np.mean(offsets):+.2f} deg "
          f"(SD {np.std(offsets):.2f}); head_pitch_deg - pitch parameter MAE {np.mean(np.abs(pca_errs)):.2f} deg")


def part_arms(n, matrix, seed0):
    from sklearn.metrics import roc_auc_score

    from metrics import positioning as P
    from phantoms import anatomy, simulate
    from qc.pipeline import compute_masks

    rng = np.random.default_rng(seed0)
    y, s = [], []
    for i in range(n):
        down = i % 2 == 0
        seed = int(rng.choice(ARMS_DOWN_SEEDS)) if down else int(rng.integers(0, 10000))
        shape = anatomy.ChestShape.random(np.random.default_rng(seed), arms_up=not down)
        yaw, sx, sy = rng.uniform(-10, 10), rng.uniform(-30, 30), rng.uniform(-30, 30)
        ph = simulate("chest", seed=seed, matrix=matrix, arms_up=not down, yaw=yaw, shift_x=sx, shift_y=sy,
                      z_start=shape.base_z + rng.uniform(-20, 40), z_end=shape.apex_z + rng.uniform(-40, 20))
        got = _call(P.arms_in_field_pct, _avail(ph.scan, compute_masks(ph.scan), "chest"))
        y.append(not ph.truth["arms_up"])
        s.append(got)
        print(f"{i:3d} seed {seed:5d} arms_up {ph.truth['arms_up']!s:5} | arms_in_field_pct {got:.1f}", flush=True)
    acc = np.mean([(g > 50) == t for g, t in zip(s, y)])
    print(f"SUMMARY arms_in_field_pct (matrix {matrix}): n={n}, AUC {roc_auc_score(y, s):.3f}, accuracy (> 50 % = arms down) {acc:.3f}")


def part_timing(repeat: int = 5):
    from metrics import coverage as C
    from metrics import dose as D
    from metrics import positioning as P
    from metrics import radiation as R
    from phantoms import simulate
    from qc.pipeline import compute_masks

    def best(fn, av):
        out = []
        for _ in range(repeat):
            t = time.perf_counter()
            _call(fn, av)
            out.append(time.perf_counter() - t)
        return min(out)

    ph = simulate("chest", seed=1, matrix=512, slice_mm=1.0, z_start=100.0 - 299, z_end=100.0)
    av = _avail(ph.scan, compute_masks(ph.scan), "chest")
    print(f"chest {ph.scan.shape[2]}x{ph.scan.shape[1]}x{ph.scan.shape[0]}:")
    for fn in (C.lung_apex_margin_mm, C.lung_base_margin_mm, D.excess_scan_length_mm, P.arms_in_field_pct):
        print(f"  {fn.__name__:28s} {best(fn, av):.3f} s (best of {repeat})")
    ph = simulate("head", seed=5, matrix=512)
    av = _avail(ph.scan, compute_masks(ph.scan), "head")
    print(f"head {ph.scan.shape[2]}x{ph.scan.shape[1]}x{ph.scan.shape[0]}:")
    for fn in (C.vertex_margin_mm, C.skull_base_margin_mm, D.excess_scan_length_mm, R.lens_in_scan_range,
               R.lens_extent_in_range_mm, P.orbitomeatal_angle_deg):
        print(f"  {fn.__name__:28s} {best(fn, av):.3f} s (best of {repeat})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["lens", "head", "chest", "om", "arms", "timing"])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--matrix", type=int, default=None,
                    help="default 128 (heads), 256 (chests: at 128, 3.9 mm pixels, the classical lung mask fails on slim chests)")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    m = a.matrix or (256 if a.part in ("chest", "arms") else 128)
    if a.part == "lens":
        part_lens(a.n, m, a.seed)
    elif a.part in ("head", "chest"):
        _coverage(a.part, a.n, m, a.seed)
    elif a.part == "om":
        part_om(a.n, m, a.seed)
    elif a.part == "arms":
        part_arms(a.n, m, a.seed)
    else:
        part_timing()


if __name__ == "__main__":
    main()
