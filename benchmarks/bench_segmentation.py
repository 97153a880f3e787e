"""Benchmark: network (MONAI) vs classical segmentation — accuracy and speed, measured in one run.

Run: python benchmarks/bench_segmentation.py [--n-heldout 8] [--slices 300] [--repeat 2] [--skip-heldout]

1. Held-out simulated scans (``detectors.segmentation.make_case``, seeds 2,000,000 + i: never used for training
   or for the manifest's own evaluation), matrix 256: Dice per output mask of the shipped network, and of the
   classical fallback for body / lungs / brain (intracranial).
2. The real abdomen CT of ``../shared/data/abdomen_ct_totalseg`` (``example_ct_sm`` with its TotalSegmentator
   reference ``example_seg``, matched by voxel index): lungs (lobes 10-14), bone (vertebrae 25-50, ribs 92-115,
   sternum 116) and spine (vertebrae + spinal cord 79), chest model vs classical. The reference has no body class:
   for the body the fraction of reference-labelled voxels inside the body mask and the network/classical agreement
   are printed. Skipped cleanly when the folder is absent.
3. Speed on a 512 x 512 x 300 simulated chest (1 mm slices): load time of the NIfTI, classical segmentation,
   network segmentation (model already loaded; best of ``--repeat``) and ``compute_masks(..., 'monai')`` with
   region auto (region from classical masks on a 3 mm grid, then the network), each as a ratio to the load time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "abdomen_ct_totalseg"
BONE_HU = 300.0  # classical bone threshold (detectors.classical.BONE_THRESHOLD_HU)


def heldout(n: int) -> None:
    from detectors import segmentation as seg

    for region in ("head", "chest"):
        seeds = [2_000_000 + i for i in range(n)]
        r = seg.evaluate(region, seeds, matrix=256)
        print(f"\n[{region}] held-out simulated scans: n={n}, matrix 256, seeds {seeds[0]}..{seeds[-1]}; "
              f"network inference {r['inference_s_mean']:.2f} s/scan")
        print(f"  {'mask':20s} {'network mean (min)':>20s} {'classical mean (min)':>22s}")
        for name, m in r["network"].items():
            c = r["classical"].get(name)
            cs = f"{c['mean']:.4f} ({c['min']:.4f})" if c else "-"
            print(f"  {name:20s} {m['mean']:.4f} ({m['min']:.4f}) n={m['n']:<3d} {cs:>22s}")


def real_abdomen() -> None:
    if not SHARED.is_dir():
        print("\n[real abdomen] skipped: ../shared/data/abdomen_ct_totalseg is absent")
        return
    import SimpleITK as sitk

    from detectors import classical, segmentation as seg
    from qc.io import load_scan

    scan = load_scan(SHARED / "example_ct_sm.nii.gz")
    ref = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(SHARED / "example_seg.nii.gz")), "LPS"))
    if ref.shape != scan.hu.shape:
        print(f"\n[real abdomen] skipped: reference shape {ref.shape} != CT shape {scan.hu.shape}")
        return
    lungs = np.isin(ref, range(10, 15))
    vertebrae = np.isin(ref, range(25, 51))
    bone = vertebrae | np.isin(ref, range(92, 117))
    spine = vertebrae | (ref == 79)
    labelled = ref > 0
    net = seg.segment(scan.hu, scan.spacing, "chest", scan.fov)
    cl = classical.segment(scan.hu, scan.spacing, scan.fov)
    hu = scan.hu
    net_bone = (net["body_mask"] & (hu > BONE_HU)) | net["spine_mask"]
    cl_bone = cl["body_mask"] & (hu > BONE_HU)
    d = seg.dice
    print(f"\n[real abdomen] example_ct_sm {scan.hu.shape} (z,y,x) 3 mm vs TotalSegmentator example_seg; chest model")
    print(f"  lungs  Dice network {d(net['lung_mask'], lungs):.4f}   classical {d(cl['lung_mask'], lungs):.4f}")
    print(f"  bone   Dice network {d(net_bone, bone):.4f}   classical {d(cl_bone, bone):.4f}   "
          f"(network: body & HU>{BONE_HU:.0f} | spine_mask; classical: body & HU>{BONE_HU:.0f})")
    print(f"  spine  Dice network spine_mask {d(net['spine_mask'], spine):.4f}   (classical has no spine mask)")
    print(f"  body   reference-labelled voxels inside: network {net['body_mask'][labelled].mean():.4f}   "
          f"classical {cl['body_mask'][labelled].mean():.4f}; network vs classical body Dice "
          f"{d(net['body_mask'], cl['body_mask']):.4f}")


def speed(slices: int, repeat: int) -> None:
    import torch

    from detectors import classical, segmentation as seg
    from phantoms import simulate, write_phantom
    from qc.io import load_scan
    from qc.pipeline import compute_masks

    z_top = 100.0
    ph = simulate("chest", seed=0, matrix=512, slice_mm=1.0, z_start=z_top - slices + 1, z_end=z_top)
    with tempfile.TemporaryDirectory() as d:
        path = write_phantom(ph, Path(d))["scan"]
        del ph
        seg.load_model("chest")
        load_s, cl_s, net_s, auto_s = [], [], [], []
        for _ in range(repeat):
            t = time.perf_counter()
            scan = load_scan(path)
            load_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            classical.segment(scan.hu, scan.spacing, scan.fov)
            cl_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            seg.segment(scan.hu, scan.spacing, "chest", scan.fov)
            net_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            compute_masks(scan, "monai", "auto")
            auto_s.append(time.perf_counter() - t)
    lo = min(load_s)
    print(f"\n[speed] 512x512x{slices} simulated chest, torch threads {torch.get_num_threads()}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, best of {repeat}")
    print(f"  load                 {lo:.2f} s")
    for name, v in (("classical segment", cl_s), ("network segment", net_s), ("monai, region auto", auto_s)):
        print(f"  {name:20s} {min(v):.2f} s   ratio to load {min(v) / lo:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-heldout", type=int, default=8)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip-heldout", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    if not args.skip_heldout:
        heldout(args.n_heldout)
    real_abdomen()
    if not args.skip_speed:
        speed(args.slices, args.repeat)


if __name__ == "__main__":
    main()
