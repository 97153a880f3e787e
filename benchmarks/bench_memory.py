"""Benchmark: peak memory (RSS) of `qc assess` on a 512 x 512 x 300 simulated chest CT.

Run: python benchmarks/bench_memory.py [--slices 300] [--keep DIR] [--repeat N] [--profile]

Target (issue, reliability item 5): peak RSS of `qc assess` <= 4x the size of the volume stored as int16.

1. Simulates a chest phantom (``phantoms.simulate('chest', seed=1, matrix=512, slice_mm=1.0)``, ``--slices``
   slices of 1 mm; 40-90 s) in a child process and writes it as an int16 NIfTI (``--keep DIR`` keeps it there and
   reuses it). The simulation must not run in this process: a child's ru_maxrss also counts the memory of the
   parent it was forked from.
2. Runs `qc assess FILE --json OUT` (``qc.cli.main``, as the console script) in a fresh child process and reads
   that child's own ``ru_maxrss`` with ``os.wait4`` (peak resident set size; KiB on Linux); the child also
   reports its VmHWM (the same number) and the modules it imported. Load and total times come from the JSON.
3. Runs another fresh child that imports exactly those modules and nothing else happens: its RSS is the
   baseline of any process that can assess (SimpleITK alone is ~96 MiB), so that the increment due to the
   volume is visible.
4. ``--profile``: a third child runs the stages by hand (load, masks, each IQM) and prints the peak RSS
   *increment* of each stage over the RSS before it (the high-water mark is reset by writing 5 to
   ``/proc/self/clear_refs`` before each stage): it names the stages that make full-volume copies.

Prints: int16 volume size, baseline RSS after imports, peak RSS, peak - baseline, ratio peak / int16 size,
load and total times. All numbers come from this one run on this machine.

Measured here (2 shared cores, numpy 2, glibc; 150.0 MiB int16 volume):

* before (float32 HU, SimpleITK header reader): peak 867 MiB = 5.78x; imports 183 MiB, load +452 MiB (int16
  pixels + the float32 volume), masks +338 MiB, full-volume temporaries in clipped_voxel_fraction_pct (+84),
  truncation_pct (+84), centering offsets (+75 each), global/air noise (+55/+54), snr (+40), arms (+40).
* after: peak 487 MiB = 3.24x (peak - imports 399 MiB = 2.66x). Stages: imports 87 MiB (a plain NIfTI's header
  is read with nibabel: SimpleITK, ~96 MiB resident, is not imported); load +300 MiB (the int16 pixels as read
  and their LPS-ordered copy; ``scan.hu`` stays int16, 150 MiB); masks +245 MiB (three full-size bool masks,
  225 MiB, kept, + one working-grid mask; label sizes counted in chunks, np.bincount's int64 copy of the label
  image avoided; glibc's mmap threshold fixed at 4 MiB by ``qc.memory`` so freed temporaries leave the process
  instead of being kept on the heap, which held ~90 MiB more); each IQM <= +21 MiB (slice samples processed a
  few slices at a time, masked reductions instead of ``hu[body_mask]``, no copy of the broadcast field of view).
  What remains: the volume (1x), the three masks (1.5x), imports (0.6x); the load-time copy is transient.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))
MIB = 2**20

_IMPORTS = """
import numpy, scipy.ndimage, nibabel, pydicom
import qc.cli, qc.pipeline, qc.io, qc.config, detectors.classical, detectors.region, regression.model
from metrics.registry import get_registry
get_registry()
"""

#: `qc assess` as the console script runs it, plus its own high-water mark and the modules it imported
_ASSESS = """
import json, sys
from qc.cli import main
rc = main(['assess', sys.argv[1], '--json', sys.argv[2]])
hwm = next(int(ln.split()[1]) * 1024 for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))
mods = sorted(m for m in sys.modules if not m.startswith('__main__'))
json.dump({'rc': rc, 'hwm': hwm, 'modules': mods}, open(sys.argv[3], 'w'))
sys.exit(rc)
"""

#: a process that imports exactly what `qc assess` imported, and nothing else happens
_BASELINE = """
import importlib, json, sys
for m in json.load(open(sys.argv[1]))['modules']:
    try:
        importlib.import_module(m)
    except Exception:
        pass
rss = next(int(ln.split()[1]) * 1024 for ln in open('/proc/self/status') if ln.startswith('VmRSS:'))
print(json.dumps({'rss': rss}))
"""

_PROFILE = _IMPORTS + """
import json, sys, time
import numpy as np

def status(key):
    for ln in open('/proc/self/status'):
        if ln.startswith(key + ':'):
            return int(ln.split()[1]) * 1024

def reset_peak():
    try:
        with open('/proc/self/clear_refs', 'w') as fh:
            fh.write('5')
        return True
    except OSError:
        return False

rows = []
def stage(name, fn):
    before = status('VmRSS')
    ok = reset_peak()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    rows.append({'stage': name, 'rss_before': before, 'peak': status('VmHWM') if ok else None,
                 'rss_after': status('VmRSS'), 'seconds': dt})
    return out

from qc.io import load_scan
from qc.memory import return_large_arrays_to_the_system
from qc.pipeline import compute_masks, isocenter_index
return_large_arrays_to_the_system()  # as qc.pipeline.assess does
from detectors.region import classify_region
scan = stage('load', lambda: load_scan(sys.argv[1]))
masks = stage('masks', lambda: compute_masks(scan))
decision = classify_region(masks['body_mask'], masks['lung_mask'], masks['intracranial_mask'])
region = decision.region if decision.region in ('head', 'chest') else 'chest'
available = {'hu': scan.hu, 'spacing': scan.spacing, 'fov': scan.fov, 'z_positions': scan.z_positions_mm(),
             'isocenter_xy': isocenter_index(scan), 'metadata': scan.metadata, 'region': region, **masks}
for name, spec in get_registry().items():
    if region in spec.regions:
        stage('iqm ' + name, lambda spec=spec: spec.compute(available))
info = {'fov': [type(scan.fov).__name__, int(scan.fov.nbytes) if scan.fov.strides[0] else 0, bool(scan.fov.strides[0] == 0)],
        **{k: [int(v.nbytes) if v.strides[0] else 0, bool(v.strides[0] == 0)] for k, v in masks.items()}}
print(json.dumps({'rows': rows, 'arrays': info}))
"""


def _mib(n) -> str:
    return "n/a" if n is None else f"{n / MIB:7.1f} MiB"


def make_volume(path: Path, slices: int) -> tuple[int, int, int]:
    """Simulate and write the chest (run in a child process, so that this one stays small: a child's
    ru_maxrss counts the memory of the parent it was forked from)."""
    import SimpleITK as sitk

    from phantoms import simulate

    top = 100.0
    t = time.perf_counter()
    ph = simulate("chest", seed=1, matrix=512, slice_mm=1.0, z_start=top - slices + 1, z_end=top)
    shape = ph.scan.shape
    img = sitk.Cast(ph.scan.to_sitk(), sitk.sitkInt16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    print(f"simulated {shape[2]}x{shape[1]}x{shape[0]} (x*y*z) chest in {time.perf_counter() - t:.1f} s -> {path}")
    return shape


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_assess(path: Path, tmp: Path) -> tuple[int, int, float, dict, dict]:
    """A fresh `qc assess` process: its peak RSS from os.wait4 (bytes), its own VmHWM (bytes), wall time, the
    JSON result and the child's report (modules imported)."""
    out_json, info = tmp / "result.json", tmp / "child.json"
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _ASSESS, str(path), str(out_json), str(info)],
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (not the max over all children)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"qc assess failed (exit {proc.returncode}):\n{err}")
    child = json.loads(info.read_text())
    return usage.ru_maxrss * 1024, child["hwm"], wall, json.loads(out_json.read_text()), child


def _child_json(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=_env(), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep (and reuse) the simulated NIfTI")
    ap.add_argument("--repeat", type=int, default=1, help="assess runs (peak: max, times: min)")
    ap.add_argument("--profile", action="store_true", help="also print the peak RSS increment of each stage")
    ap.add_argument("--make", type=Path, default=None, help=argparse.SUPPRESS)  # internal: simulate into PATH
    args = ap.parse_args()
    if args.make is not None:
        make_volume(args.make, args.slices)
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        path = folder / f"chest_512x512x{args.slices}.nii.gz"
        if path.is_file():
            print(f"reusing {path}")
        else:
            subprocess.run([sys.executable, __file__, "--make", str(path), "--slices", str(args.slices)], check=True)
        import SimpleITK as sitk

        r = sitk.ImageFileReader()
        r.SetFileName(str(path))
        r.ReadImageInformation()
        shape = tuple(reversed(r.GetSize()))
        int16_bytes = 2 * shape[0] * shape[1] * shape[2]
        peaks, hwms, loads, totals, walls = [], [], [], [], []
        for _ in range(args.repeat):
            peak, hwm, wall, res, child = run_assess(path, Path(tmp))
            peaks.append(peak)
            hwms.append(hwm)
            walls.append(wall)
            loads.append(res["timings_s"]["load"])
            totals.append(res["timings_s"]["total"])
        modules = Path(tmp) / "modules.json"
        modules.write_text(json.dumps({"modules": child["modules"]}))
        base = _child_json(_BASELINE, str(modules))["rss"]
        peak = max(peaks)
        print(f"volume                {shape[2]}x{shape[1]}x{shape[0]} (x*y*z), region {res['region']}")
        print(f"int16 volume size     {_mib(int16_bytes)}")
        print(f"baseline RSS (imports){_mib(base)}   (a process importing the {len(child['modules'])} modules qc assess loaded)")
        print(f"peak RSS qc assess    {_mib(peak)}   (os.wait4 ru_maxrss; the child's own VmHWM: {_mib(max(hwms))})")
        print(f"peak - baseline       {_mib(peak - base)}  ({(peak - base) / int16_bytes:.2f}x int16)")
        print(f"ratio peak / int16    {peak / int16_bytes:.2f}  (target <= 4)")
        print(f"load {min(loads):.2f} s, assess total {min(totals):.2f} s, process wall {min(walls):.2f} s "
              f"(best of {args.repeat})")
        if args.profile:
            prof = _child_json(_PROFILE, str(path))
            print("\nstage                                    RSS before   peak - before   RSS after   seconds")
            for row in prof["rows"]:
                inc = None if row["peak"] is None else row["peak"] - row["rss_before"]
                print(f"{row['stage']:<40} {_mib(row['rss_before'])} {_mib(inc)} {_mib(row['rss_after'])} "
                      f"{row['seconds']:7.2f}")
            print("arrays kept (bytes, broadcast view?):", json.dumps(prof["arrays"]))


if __name__ == "__main__":
    main()
