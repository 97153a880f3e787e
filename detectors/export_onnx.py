"""``qc export-onnx``: every shipped torch network -> ``detectors/weights/<name>.onnx`` (see detectors/runtime.py).

Each export is checked on inputs of the shapes assessment feeds (two shapes where the network takes any size)
against the torch network it came from; the largest absolute difference is recorded in the manifest.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

#: the exportable shipped networks, in the order they are exported
NAMES = ("seg_head", "seg_chest", "yolo_head", "yolo_chest", "yolo_artifacts", "yolo_artifacts_b", "chest_iqa",
         "noise2quality", "tfkt")


def _seg(name: str, manifest: Path | None):
    from detectors import segmentation

    region = name.split("_", 1)[1]
    net, _ = segmentation.load_model(region, manifest)
    net = net.cpu().eval()
    rng = np.random.default_rng(0)
    shapes = [(1, 3, 80, 128, 128), (1, 3, 48, 96, 72)]
    checks = [(rng.uniform(0, 1.2, s).astype(np.float32),) for s in shapes]
    return net, checks[0], dict(input_names=["x"], output_names=["logits"],
                                dynamic_axes={"x": {0: "n", 2: "z", 3: "y", 4: "x"},
                                              "logits": {0: "n", 2: "z", 3: "y", 4: "x"}}), {}, checks


def _yolo(name: str, manifest: Path | None):
    from detectors import yolo_detect

    model = name.split("_", 1)[1]
    net, _ = yolo_detect.load_model(model, manifest)
    rng = np.random.default_rng(0)
    checks = [(rng.uniform(0, 1, (1, 3, 256, 256)).astype(np.float32),),
              (rng.uniform(0, 1, (2, 3, 352, 288)).astype(np.float32),)]
    return yolo_detect.export_module(net), checks[0], dict(
        input_names=["images"], output_names=["boxes", "scores"],
        dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "boxes": {0: "n", 2: "anchors"},
                      "scores": {0: "n", 2: "anchors"}}), yolo_detect.onnx_meta(net), checks


def _chest_iqa(name: str, manifest: Path | None):
    from detectors import chest_iqa

    model = chest_iqa.shipped_model(manifest)
    meta = chest_iqa.onnx_meta(model)
    rng = np.random.default_rng(0)
    n_s = int(model.scalar_mean.numel())
    checks = [(rng.normal(0, 0.3, (b, meta["in_ch"]) + tuple(chest_iqa.CROP)).astype(np.float32),
               rng.normal(0, 1, (b, n_s)).astype(np.float32)) for b in (1, 2)]
    return chest_iqa.export_module(model), checks[0], dict(
        input_names=["x", "scalars"], output_names=["window", "dose", "snr", "brisque"],
        dynamic_axes={"x": {0: "n"}, "scalars": {0: "n"}, "window": {0: "n"}, "dose": {0: "n"}, "snr": {0: "n"},
                      "brisque": {0: "n"}}), meta, checks


def _n2q(name: str, manifest: Path | None):
    from detectors import noise2quality as n2q

    model = n2q.shipped_model(manifest)
    rng = np.random.default_rng(0)
    checks = []
    for b in (3, 1):
        w = rng.uniform(0, 1, (b, 256, 256)).astype(np.float32)
        m = np.zeros((b, 256, 256), np.float32)
        m[:, 40:220, 30:230] = 1.0
        checks.append((n2q.input_channels(w), m))
    return model, checks[0], dict(
        input_names=["x", "mask"], output_names=["ssim_map", "dose_logits"],
        dynamic_axes={"x": {0: "n"}, "mask": {0: "n"}, "ssim_map": {0: "n"}, "dose_logits": {0: "n"}}), {}, checks


def _tfkt(name: str, manifest: Path | None):
    from detectors import tfkt

    model = tfkt.shipped_model(manifest)
    rng = np.random.default_rng(0)
    checks = [(rng.uniform(-0.5, 0.5, (b, 1, tfkt.SIZE, tfkt.SIZE)).astype(np.float32),) for b in (4, 1)]
    return tfkt.export_module(model), checks[0], dict(
        input_names=["v"], output_names=["score"], dynamic_axes={"v": {0: "n"}, "score": {0: "n"}}), {}, checks


_BUILDERS = {"seg_head": _seg, "seg_chest": _seg, "yolo_head": _yolo, "yolo_chest": _yolo, "yolo_artifacts": _yolo,
             "yolo_artifacts_b": _yolo,
             "chest_iqa": _chest_iqa, "noise2quality": _n2q, "tfkt": _tfkt}


def export_one(name: str, manifest: Path | None = None) -> dict:
    """Export the shipped network ``name`` (one of :data:`NAMES`) and register it; returns the manifest entry."""
    import torch

    from detectors import runtime
    from qc.errors import QCInputError

    if name not in _BUILDERS:
        raise QCInputError(f"no ONNX export for '{name}' (exportable: {', '.join(NAMES)})")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    module, example, io, meta, checks = _BUILDERS[name](name, manifest)
    if module is None:
        raise QCInputError(f"'{name}' has no shipped weights to export")
    # YOLO: the trained weights are shipped in fp16 already (detectors/yolo_detect.py), so their ONNX files are too
    return runtime.export(name, module, example, meta=meta, check_inputs=checks, manifest=manifest,
                          fp16_weights=name.startswith("yolo_"), **io)


def export_all(names=NAMES, manifest: Path | None = None, log=print) -> dict[str, dict]:
    out = {}
    for name in names:
        t = time.perf_counter()
        e = export_one(name, manifest)
        out[name] = e
        log(f"{name}: {e['file']} {e['bytes'] / 2**20:.2f} MiB, onnxruntime vs torch max |diff| "
            f"{e['onnxruntime_vs_torch_max_abs_diff']:.2e} on {e['n_check_inputs']} inputs ({time.perf_counter() - t:.1f} s)")
    return out


if __name__ == "__main__":  # python -m detectors.export_onnx [names...]
    import sys

    export_all(tuple(sys.argv[1:]) or NAMES)
