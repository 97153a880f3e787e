"""Benchmark: every detector `qc assess` runs by default, on a 512 x 512 x 300 simulated chest (issue 6: <= 3 s on
2 CPU cores).

Run: python benchmarks/bench_detectors.py [--slices 300] [--repeat 3] [--keep DIR]

1. Simulates the chest of bench_memory.py (``phantoms.simulate('chest', seed=1, matrix=512, slice_mm=1.0)``,
   ``--slices`` slices of 1 mm) as an int16 NIfTI (``--keep DIR`` keeps it there and reuses it; same file name);
   loads it with ``qc.io.load_scan`` (the load time is the yardstick of the ratios).
2. Imports onnxruntime and opens the ONNX sessions the chest needs (cold start, once per process).
3. Times each detector as the pipeline calls it, model loaded, best of ``--repeat`` (wall and CPU seconds of this
   process; the machine is shared, so CPU seconds / 2 cores is the floor of the wall time): body region, MONAI
   segmentation (``compute_masks(scan, 'monai', 'auto', outputs=mask_inputs())`` as assess calls it: region and
   network on the same 4 mm grid, full-resolution HU refinement of the masks the IQMs read), YOLO landmarks, YOLO
   artifacts (the two-model ensemble), Chest CT-IQA, TFKT, Noise2Quality, and the whole of ``network_outputs``
   (everything after the masks).
4. Prints the sum, the detectors one after another (masks + region + ``network_outputs``), and a whole warm
   ``qc.pipeline.assess`` (the networks run in a second thread while the IQMs are computed), their ratios to the
   load time, whether torch was imported (it must not be), and ONNX Runtime's thread setting.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _timed(fn, repeat: int):
    wall, cpu, out = [], [], None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    i = min(range(repeat), key=lambda k: wall[k])
    return wall[i], cpu[i], out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()

    from qc.io import load_scan

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_det_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"chest_512x512x{args.slices}.nii.gz"  # the file bench_memory.py --keep writes
    if not path.exists():
        import subprocess

        t = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_memory.py"), "--make", str(path), "--slices",
                        str(args.slices)], check=True)
        print(f"simulated and wrote {path.name} in {time.perf_counter() - t:.0f} s")
    load_s, _, scan = _timed(lambda: load_scan(path), 1)
    print(f"volume {scan.shape} (z, y, x), spacing {tuple(round(s, 3) for s in scan.spacing)} mm; load {load_s:.2f} s")

    t = time.perf_counter()
    import onnxruntime  # noqa: F401

    from detectors import chest_iqa, noise2quality, runtime, segmentation, tfkt, yolo_detect as yd
    import_s = time.perf_counter() - t
    t = time.perf_counter()
    seg_net = segmentation.default_model("chest")
    lm_net, art_net = yd.default_model("chest"), yd.artifact_ensemble()
    iqa, tf, n2q = (runtime.default_model(m.WEIGHTS_NAME, m.shipped_model) for m in (chest_iqa, tfkt, noise2quality))
    open_s = time.perf_counter() - t
    nets = [seg_net, lm_net, *art_net, iqa, tf, n2q]
    if not all(isinstance(n, runtime.OnnxNet) for n in nets):
        print("WARNING: not every detector runs from its ONNX export:", [type(n).__name__ for n in nets])
    print(f"onnxruntime import + detectors modules {import_s:.2f} s; open {len(nets)} ONNX sessions {open_s:.2f} s "
          f"(once per process); ONNX Runtime intra-op threads {os.environ.get('QC_ONNX_THREADS', '2')}")

    from detectors.region import decide as decide_region
    from qc.pipeline import compute_masks, mask_inputs, network_outputs

    rows = []
    # the masks assessment builds (mask_inputs(): body, lungs, brain); the chest network's other masks (trachea,
    # mediastinum, aorta, spine, arms, metal) are built only on request: 0.8-1.6 s more on a busy machine
    w, c, masks = _timed(lambda: compute_masks(scan, "monai", "auto", outputs=mask_inputs()), args.repeat)
    rows.append(("MONAI segmentation (region auto)", w, c))
    w, c, _ = _timed(lambda: decide_region(scan.hu, scan.spacing, masks["body_mask"], masks["lung_mask"],
                                           masks["intracranial_mask"]), args.repeat)
    rows.append(("body-region model", w, c))
    w, c, _ = _timed(lambda: yd.detect_landmarks_scan(scan, "chest", net=lm_net), args.repeat)
    rows.append(("YOLO landmarks (chest)", w, c))
    w, c, _ = _timed(lambda: yd.detect_artifacts(scan.hu, scan.spacing[2], net=art_net), args.repeat)
    rows.append(("YOLO artifacts", w, c))
    w, c, _ = _timed(lambda: chest_iqa.predict_volume(scan.hu, scan.spacing, iqa), args.repeat)
    rows.append(("Chest CT-IQA", w, c))
    w, c, _ = _timed(lambda: tfkt.predict_volume(scan.hu, scan.spacing, tf), args.repeat)
    rows.append(("TFKT", w, c))
    w, c, _ = _timed(lambda: noise2quality.predict_volume(scan.hu, scan.spacing, n2q), args.repeat)
    rows.append(("Noise2Quality", w, c))
    total_w = sum(r[1] for r in rows)
    total_c = sum(r[2] for r in rows)
    print(f"\nbest of {args.repeat}, models loaded         wall s   CPU s   wall / load")
    for name, w, c in rows:
        print(f"  {name:36s} {w:6.2f}  {c:6.2f}   {w / load_s:5.2f}")
    print(f"  {'sum of the detectors':36s} {total_w:6.2f}  {total_c:6.2f}   {total_w / load_s:5.2f}")
    w, c, (out, versions) = _timed(lambda: network_outputs(scan, "chest"), args.repeat)
    print(f"  {'network_outputs() as assess calls it':36s} {w:6.2f}  {c:6.2f}   {w / load_s:5.2f}   "
          f"(everything after the masks)")
    print(f"  {'ALL DETECTORS: masks + region + networks':36s} {rows[0][1] + rows[1][1] + w:6.2f}  "
          f"{rows[0][2] + rows[1][2] + c:6.2f}   {(rows[0][1] + rows[1][1] + w) / load_s:5.2f}   (one after another)")
    from qc.pipeline import assess

    w, c, res = _timed(lambda: assess(scan), args.repeat)
    print(f"  {'whole qc assess (masks, 44 IQMs, nets)':36s} {w:6.2f}  {c:6.2f}   {w / load_s:5.2f}   (networks in a "
          f"second thread during the IQMs; stages {res.timings_s})")
    print(f"\ntorch imported: {'torch' in sys.modules}; ultralytics imported: {'ultralytics' in sys.modules}; "
          f"monai imported: {'monai' in sys.modules}")
    print("versions:", ", ".join(f"{k}={v}" for k, v in versions.items()))
    try:
        print(f"load average {os.getloadavg()[0]:.1f} (other jobs on this 2-core machine)")
    except OSError:
        pass


if __name__ == "__main__":
    main()
