"""Benchmark: YOLO landmark and artifact detection (detectors/yolo_detect.py) — accuracy and speed in one run.

Run: python benchmarks/bench_detection.py [--n-landmark 20] [--n-artifact 10] [--slices 300] [--workers 1]
     [--skip-accuracy | --skip-landmarks] [--skip-speed] [--artifact-seeds 360000,370000]

1. Landmarks: held-out simulated volumes per region (``landmark_item(heldout=True)``: matrix 128-512, slice
   1.25/2.5/3/5 mm, random pose, table shift and scan range; seeds 340,000 + i (head) / 350,000 + i (chest), used
   neither for training nor for the manifest's metrics): per-landmark |z_detected - z_true| MAE, median, max (mm).
2. Artifacts: held-out scans (2 slices of 2.5 mm, 128 matrix, severity 0.5; seeds 360,000+ / 370,000+, or
   ``--artifact-seeds HEAD,CHEST``):
   ROC AUC of the YOLO per-scan score (max box confidence over the slices) and of the explicit IQM of
   metrics/artifacts.py (streak_index_hu, motion_index_hu, ring_index_hu) on the same scans. Negatives: scans without
   artifacts, plus streak-free metal for 'metal'.
3. Speed on a 512 x 512 x ``--slices`` simulated chest (1 mm slices), model loaded: the projection image, the
   landmark network pass, and the artifact pass (24 evenly spaced slices + the metal slices), best of 2.
"""

from __future__ import annotations

import argparse
import time


def landmarks(n: int, workers: int) -> None:
    from detectors import yolo_detect as yd

    for region, s0 in (("head", 340_000), ("chest", 350_000)):
        net = yd.shipped_model(region)
        if net is None:
            print(f"[{region}] shipped weights missing (qc train det --region {region})")
            continue
        items = yd.heldout_landmark_items(region, n, seed0=s0, workers=workers)
        r = yd.evaluate_landmarks(net, region, items)
        print(f"\n[{region}] landmark z error on {n} held-out volumes (seeds {s0}..{s0 + n - 1}); network "
              f"{1000 * r['network_s_per_image']:.0f} ms/image")
        print(f"  {'landmark':20s} {'MAE mm':>7s} {'median':>7s} {'max':>7s} {'missed':>6s} {'min conf':>8s}")
        for k, m in r["landmarks"].items():
            print(f"  {k:20s} {m['mae_mm']:7.2f} {m['median_mm']:7.2f} {m['max_mm']:7.2f} {m['missed']:6d} "
                  f"{m['min_confidence']:8.3f}")


def artifacts(n: int, workers: int, seeds=(360_000, 370_000)) -> None:
    from detectors import yolo_detect as yd

    net = [n for n in (yd.shipped_model(m) for m in yd.ARTIFACT_MODELS) if n is not None]  # the ensemble
    if len(net) < len(yd.ARTIFACT_MODELS):
        print("[artifacts] shipped weights missing (qc train det --region artifacts / artifacts_b)")
        return
    for region, s0 in zip(("head", "chest"), seeds):
        t0 = time.perf_counter()
        cases = yd.artifact_heldout_cases(region, n, seed0=s0, workers=workers)
        t_sim = time.perf_counter() - t0
        r = yd.evaluate_artifacts(net, cases)
        print(f"\n[{region}] artifact detection, {len(cases)} held-out scans (seeds {s0}+, {n} per kind: "
              f"{', '.join(yd.ART_KINDS)}; simulated in {t_sim:.0f}s); YOLO {1000 * r['network_s_per_scan']:.0f} ms/scan")
        print(f"  {'artifact':8s} {'n+':>3s} {'n-':>3s} {'YOLO AUC':>9s}  explicit IQM (AUC)")
        for a, m in r["artifacts"].items():
            print(f"  {a:8s} {m['n_pos']:3d} {m['n_neg']:3d} {m['yolo_auc']:9.3f}  {m['explicit_iqm']} "
                  f"({m['explicit_auc']:.3f})")


def speed(slices: int) -> None:
    import torch

    from detectors import yolo_detect as yd
    from phantoms import simulate

    net, art = yd.shipped_model("chest"), [yd.shipped_model(m) for m in yd.ARTIFACT_MODELS]
    if net is None or any(a is None for a in art):
        return
    t0 = time.perf_counter()
    ph = simulate("chest", seed=0, matrix=512, slice_mm=1.0, z_start=80.0 - slices + 1, z_end=80.0, artifacts=None)
    t_sim = time.perf_counter() - t0
    sc = ph.scan
    best = {"projection": 1e9, "landmarks": 1e9, "artifacts": 1e9}
    for _ in range(2):
        t0 = time.perf_counter()
        img, geom = yd.frame_projection(*yd.projection_image(sc.hu, sc.spacing, sc.z_positions_mm(), "chest",
                                                             origin_xy=sc.origin[:2]), "chest")
        t1 = time.perf_counter()
        det = yd._forward(net, [img])[0]
        yd.landmarks_from_detections(det, "chest", geom)
        t2 = time.perf_counter()
        yd.detect_artifacts(sc.hu, sc.spacing[2], net=art)
        t3 = time.perf_counter()
        best = {"projection": min(best["projection"], t1 - t0), "landmarks": min(best["landmarks"], t2 - t1),
                "artifacts": min(best["artifacts"], t3 - t2)}
    print(f"\n[speed] 512x512x{slices} simulated chest (simulated in {t_sim:.0f}s), torch threads "
          f"{torch.get_num_threads()}: projection image {best['projection']:.2f}s, landmark pass "
          f"{best['landmarks']:.2f}s, artifact pass ({len(yd.artifact_slices(sc.hu))} slices) {best['artifacts']:.2f}s; "
          f"total {sum(best.values()):.2f}s (best of 2, model loaded)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-landmark", type=int, default=20)
    ap.add_argument("--n-artifact", type=int, default=10)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-landmarks", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--artifact-seeds", default="360000,370000",
                    help="first seed of the head and the chest artifact scans (another held-out set: e.g. "
                         "460000,470000)")
    a = ap.parse_args()
    if not (a.skip_accuracy or a.skip_landmarks):
        landmarks(a.n_landmark, a.workers)
    if not a.skip_accuracy:
        artifacts(a.n_artifact, a.workers, tuple(int(v) for v in a.artifact_seeds.split(",")))
    if not a.skip_speed:
        speed(a.slices)


if __name__ == "__main__":
    main()
