"""The shipped networks at assessment time: ONNX files run by ONNX Runtime, so ``qc assess`` never imports torch.

Why: importing torch (the CUDA build pip installs) costs ~0.5 GiB resident memory and 3-9 s on the 2-core
machines we measure on, more than a whole assessment of a 512 x 512 x 300 chest needs (benchmarks/bench_memory.py);
``import onnxruntime`` costs ~20 MiB and ~0.1 s, and its CPU kernels ran our 3-D UNet ~2x faster than eager torch.
Torch stays what trains the networks; ``qc export-onnx`` (:func:`export`) turns each trained safetensors file into
``<name>.onnx`` next to it, checks ONNX Runtime against torch on the same inputs, and lists the file in the
manifest as ``<name>_onnx`` with its sha256, the sha256 of the safetensors it came from (a retrained network
whose ONNX was not re-exported is refused, never silently used) and the measured largest difference.

A loaded model is an :class:`OnnxNet`: numpy arrays in, numpy arrays out, in the order of the export's
``output_names``; ``meta`` holds the constants the post-processing needs (e.g. target normalisation), stored in the
ONNX file's metadata. :class:`TorchFn` wraps a torch module in the same calling convention, so every inference
routine in ``detectors/`` has one numpy code path for both backends.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from detectors import weights
from qc.safe_names import safe_child

ONNX_SUFFIX = "_onnx"
OPSET = 17


def onnx_name(name: str) -> str:
    """Manifest key of the ONNX export of the shipped network ``name``."""
    return f"{name}{ONNX_SUFFIX}"


class OnnxNet:
    """An ONNX Runtime session with numpy in/out: ``net(a, b, ...)`` feeds the inputs in the export's order."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        # at most 2 threads: the machines this runs on are shared 2-core CI/workstation slots; one inter-op thread
        # keeps the summation order (and so the outputs) the same from run to run
        so.intra_op_num_threads = max(1, min(2, int(os.environ.get("QC_ONNX_THREADS", "2"))))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # no memory arena: activations are freed after each run instead of staying reserved for the process's life
        # (the 3-D UNet's arena held ~200 MiB after one 512 x 512 x 300 chest; bench_memory.py); cost measured in
        # benchmarks/bench_detectors.py
        so.enable_cpu_mem_arena = os.environ.get("QC_ONNX_ARENA", "0") == "1"
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        raw = self.session.get_modelmeta().custom_metadata_map
        self.meta = {k: json.loads(v) for k, v in raw.items()}
        self.path = Path(path)

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        if len(arrays) != len(self.inputs):
            raise ValueError(f"{self.path.name} takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), got {len(arrays)}")
        feeds = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.inputs, arrays)}
        return self.session.run(None, feeds)

    def __repr__(self) -> str:
        return f"OnnxNet({self.path.name})"


class TorchFn:
    """A torch module in :class:`OnnxNet`'s calling convention (numpy in, list of numpy out; eval, no grad).
    Used by training, evaluation and the tests that compare the two backends."""

    def __init__(self, module, meta: dict | None = None):
        self.module = module.eval()
        self.meta = meta or {}

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays])
        out = out if isinstance(out, (list, tuple)) else [out]
        return [o.float().numpy() for o in out]


def available() -> bool:
    """Whether onnxruntime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=16)
def _load(name: str, manifest: str) -> OnnxNet:
    man = Path(manifest)
    entry = weights.model_entry(onnx_name(name), man)
    path = weights.verified_path(onnx_name(name), man)
    source = weights.model_entry(name, man)
    if entry.get("source_sha256") != source.get("sha256"):
        raise weights.WeightsError(
            f"'{path.name}' was exported from other weights than the shipped '{source.get('file')}' "
            f"(source sha256 {str(entry.get('source_sha256'))[:12]}..., shipped {str(source.get('sha256'))[:12]}...): "
            "run `qc export-onnx` after training", path)
    if path.suffix != ".onnx":
        raise weights.WeightsError("an ONNX export must be a .onnx file", path)
    return OnnxNet(path)


def shipped_onnx(name: str, manifest: Path | None = None) -> OnnxNet | None:
    """The verified ONNX export of the shipped network ``name`` (cached per process), or None when onnxruntime is
    not installed or the export is missing, tampered with or stale (see :func:`_load`)."""
    if not available():
        return None
    try:
        return _load(name, str(manifest or weights.MANIFEST))
    except weights.WeightsError:
        return None


def version(name: str, manifest: Path | None = None) -> str:
    """What the JSON names as the model that ran: '<version> sha256:<12 hex> (onnx sha256:<12 hex>)'."""
    man = Path(manifest or weights.MANIFEST)
    entry = weights.model_entry(onnx_name(name), man)
    return f"{weights.version_label(name, man)} (onnx sha256:{str(entry.get('sha256'))[:12]})"


def default_model(name: str, torch_loader):
    """What an inference routine uses when it is given no model: the ONNX export when it verifies, else the torch
    network ``torch_loader()`` returns (None when torch is not installed or the weights are missing)."""
    net = shipped_onnx(name)
    if net is not None:
        return net
    try:
        return torch_loader()
    except ImportError:
        return None


# ------------------------------------------------------------------------------------------------ export
def export(name: str, module, example: tuple, *, input_names: list[str], output_names: list[str],
           dynamic_axes: dict, meta: dict | None = None, check_inputs: list[tuple] | None = None,
           manifest: Path | None = None, note: str = "", fp16_weights: bool = False) -> dict:
    """Export ``module`` (torch, eval mode, the network of the shipped ``name``) to ``<name>.onnx`` next to the
    manifest, run ONNX Runtime and torch on ``check_inputs`` (default: ``example``) and register the file as
    ``<name>_onnx`` with the largest absolute output difference. ``meta`` (JSON-able) is stored in the file.

    Uses torch's TorchScript-based exporter (``dynamo=False``): it handles our dynamic spatial axes without
    onnxscript and gave outputs within 2e-5 of torch on the 3-D UNet. ``fp16_weights``: float weights are stored
    in half precision and cast back to float32 when ONNX Runtime loads the file (:func:`_store_fp16`): half the
    size; the recorded difference is measured after that rounding."""
    import warnings

    import onnx
    import torch

    man = Path(manifest or weights.MANIFEST)
    source = weights.model_entry(name, man)
    out = safe_child(man.parent, name, ".onnx")
    module = module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in example), str(out),
                          dynamo=False, opset_version=OPSET, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    model = onnx.load(str(out))
    model.producer_name = "ctqc qc export-onnx"
    for k, v in (meta or {}).items():
        p = model.metadata_props.add()
        p.key, p.value = k, json.dumps(v)
    if fp16_weights:
        _store_fp16(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    net = OnnxNet(out)
    ref = TorchFn(module)
    diffs, mags = [], []
    for inputs in check_inputs or [example]:
        a, b = net(*inputs), ref(*inputs)
        diffs.append(max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(a, b)))
        mags.append(max(float(np.max(np.abs(y))) if y.size else 0.0 for y in b))
    entry = {"kind": f"ONNX export of '{name}' (opset {OPSET}), run with onnxruntime at assessment time",
             "source": name, "source_sha256": source.get("sha256"), "version": f"{source.get('version', name)}-onnx",
             "inputs": input_names, "outputs": output_names, "meta": meta or {},
             "onnxruntime_vs_torch_max_abs_diff": max(diffs), "torch_max_abs_output": max(mags),
             "n_check_inputs": len(diffs),
             "fp16_weights": bool(fp16_weights), "command": "qc export-onnx", "torch": torch.__version__, "onnx": onnx.__version__, "note": note}
    full = weights.register(onnx_name(name), out, entry, man)
    _load.cache_clear()
    return full


def _store_fp16(model, min_size: int = 64) -> None:
    """Store every float32 weight of ``model`` (ONNX ModelProto, in place) with at least ``min_size`` elements as
    float16, followed by a Cast to float32: ONNX Runtime folds the casts when it loads the session, so inference
    stays float32 and only the file shrinks. (onnxconverter-common's float16 conversion would also compute in fp16,
    which the CPU kernels run slower and less accurately.)"""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    casts, keep = [], []
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            if arr.size >= min_size:
                half = numpy_helper.from_array(arr.astype(np.float16), init.name + "__fp16")
                keep.append(half)
                casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                              name=init.name + "__to_fp32"))
                continue
        keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
