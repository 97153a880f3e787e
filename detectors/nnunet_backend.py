"""nnU-Net v2 backend: export our simulated, labelled scans as an nnU-Net raw dataset, and segment with a model
folder a user trained on it (or on anything else whose label names we understand).

Export (``qc export-nnunet``, :func:`export_dataset`)
    Case ``i`` is :func:`detectors.segmentation.make_case` with seed ``seed + i`` (the same simulated population,
    positions, doses, kernels and artifacts the shipped MONAI segmenter is trained on) and its labels are
    :func:`detectors.segmentation.class_map`, so the label set is the MONAI segmenter's
    (:data:`detectors.segmentation.REGION_CLASSES`, background 0). Files follow the nnU-Net v2 raw format:
    ``DatasetXXX_CTQC<Region>/{dataset.json, imagesTr/case_0000_0000.nii.gz, labelsTr/case_0000.nii.gz}``,
    written with SimpleITK from the scan's LPS array with its spacing, origin and direction (images int16 HU,
    labels uint8). ``dataset.json`` has ``channel_names {"0": "CT"}`` (nnU-Net's CT normalisation), the labels,
    ``numTraining`` and ``file_ending``, plus a ``ctqc`` entry recording the region, seeds, matrix and the
    simulator arguments of every case. Train elsewhere (GPU) with ``nnUNetv2_plan_and_preprocess -d XXX`` and
    ``nnUNetv2_train XXX 3d_fullres 0``.

Inference (``--segmenter nnunet:MODEL_DIR``, :func:`segment`)
    ``MODEL_DIR`` is the folder ``nnUNetv2_train`` writes (``dataset.json``, ``plans.json``,
    ``fold_X/checkpoint_final.pth``; every fold present is used, as nnU-Net does). The scan's HU array (LPS,
    ``[z, y, x]``) goes in-process through ``nnUNetPredictor.predict_single_npy_array`` with spacing
    ``(dz, dy, dx)`` (the axis order of nnU-Net's SimpleITK reader), on CUDA when ``torch.cuda.is_available()``
    and else on the CPU, with no worker processes. Model labels are mapped **by name** (:data:`MASK_LABELS`) to
    the masks of :func:`qc.pipeline.compute_masks`; masks the model does not provide come from the classical
    segmenter (``qc.pipeline``). For the label set of our own export the mapping gives the same class unions as
    :data:`detectors.segmentation.OUTPUT_MASKS` (tested).

Deviations from nnU-Net's own predictor, and why:

* **Checkpoints are loaded as data.** ``nnUNetPredictor.initialize_from_trained_model_folder`` calls
  ``torch.load(weights_only=False)`` (nnunetv2 2.8.1), which runs whatever a pickle says. We load with
  ``torch.load(weights_only=True)`` and allow only numpy scalars on top of tensors and containers (nnU-Net logs
  Dice and losses as numpy floats), then hand the network to ``nnUNetPredictor.manual_initialization``. The
  network class named in ``plans.json`` must come from ``dynamic_network_architectures`` and its imported
  arguments from ``torch.nn`` (``pydoc.locate`` would otherwise import anything); the trainer class is looked up
  only in the installed nnunetv2 (and ``nnUNet_extTrainer`` when *you* set it).
* **No test-time mirroring** (nnU-Net's default mirrors along 3 axes: 8 forward passes per window). QC masks do
  not need it and it would multiply the CPU time by 8.
* nnU-Net prints progress to stdout; it is sent to stderr so that ``qc assess --json -`` stays JSON.

Measured here (2 shared CPU cores, nnunetv2 2.8.1, torch 2.14; ``tests/test_backends.py``): the default
planner gives a 64-matrix head export a 3d_fullres PlainConvUNet (5 stages, 32-320 features, patch 64 x 56 x 64,
65 MB checkpoint); predicting a 36 x 64 x 64 scan (two windows) takes 4-10 s depending on the load, 85-90 % of it
in the network's forward passes. The whole end-to-end test (export 2 cases, verify, plan, untrained checkpoint,
``qc assess``) takes 35-51 s.

Known limits: the model sees the array as :mod:`qc.io` loads it (re-oriented to LPS); a model trained on
NIfTI files stored in another orientation sees flipped axes (nnU-Net's mirroring augmentation softens this;
our export is LPS, so a model trained on it matches). CPU inference of a full 512 x 512 x 300 volume with a
3d_fullres plan takes minutes, not seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qc.errors import QCInputError

#: Default dataset IDs of the export (nnU-Net needs a unique 3-digit ID per dataset; TotalSegmentator uses 291-300).
DEFAULT_DATASET_ID = {"head": 901, "chest": 902}
CHECKPOINT_NAME = "checkpoint_final.pth"
#: Network classes a plans.json may name, and modules its ``network_arch_init_kwargs_req_import`` may import.
ALLOWED_ARCH_PREFIXES = ("dynamic_network_architectures.",)
ALLOWED_IMPORT_PREFIXES = ("torch.nn.",)


def dataset_name(region: str, dataset_id: int) -> str:
    return f"Dataset{int(dataset_id):03d}_CTQC{region.capitalize()}"


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------


def _write_case(ph, cmap: np.ndarray, image_path: Path, label_path: Path) -> None:
    import SimpleITK as sitk

    scan = ph.scan
    geometry = dict(spacing=tuple(float(s) for s in reversed(scan.spacing)),
                    origin=tuple(float(o) for o in scan.origin),
                    direction=tuple(float(d) for d in np.asarray(scan.direction, dtype=float).ravel()))
    hu = np.clip(np.rint(np.asarray(scan.hu, dtype=np.float32)), -32768, 32767).astype(np.int16)
    for arr, path in ((hu, image_path), (cmap.astype(np.uint8), label_path)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(geometry["spacing"])
        img.SetOrigin(geometry["origin"])
        img.SetDirection(geometry["direction"])
        sitk.WriteImage(img, str(path), useCompression=True)


def export_dataset(out_dir, region: str, n: int, seed: int = 0, matrix: int = 256, dataset_id: int | None = None,
                   overwrite: bool = False, log=None) -> Path:
    """Write ``n`` simulated ``region`` cases (seeds ``seed .. seed + n - 1``) as the nnU-Net v2 raw dataset
    ``out_dir/DatasetXXX_CTQC<Region>``; returns that folder. Refuses a non-empty target unless ``overwrite``,
    and another dataset with the same ID in ``out_dir`` (nnU-Net resolves datasets by ID)."""
    from detectors import segmentation

    if region not in segmentation.REGION_CLASSES:
        raise QCInputError(f"region must be head or chest, not {region!r}")
    if int(n) < 1:
        raise QCInputError(f"--n must be at least 1, not {n}")
    if not 32 <= int(matrix) <= 512:
        raise QCInputError(f"--matrix must be between 32 and 512, not {matrix}")
    dataset_id = DEFAULT_DATASET_ID[region] if dataset_id is None else int(dataset_id)
    if not 1 <= dataset_id <= 999:
        raise QCInputError(f"nnU-Net dataset IDs have three digits (1-999), not {dataset_id}")
    out_dir = Path(out_dir)
    name = dataset_name(region, dataset_id)
    root = out_dir / name
    if out_dir.is_dir():
        clash = [p.name for p in out_dir.glob(f"Dataset{dataset_id:03d}_*") if p.name != name]
        if clash:
            raise QCInputError(f"{clash[0]} already uses dataset ID {dataset_id}; choose another with --dataset-id",
                               out_dir)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise QCInputError("dataset folder exists and is not empty (use --overwrite to replace it)", root)
    try:
        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            if overwrite:
                for old in (root / sub).glob("case_*.nii.gz"):
                    old.unlink()
    except OSError as exc:
        raise QCInputError(f"cannot write output: {exc.strerror}", root) from None
    classes = segmentation.REGION_CLASSES[region]
    cases = []
    t0 = time.perf_counter()
    for i in range(int(n)):
        ph, kw = segmentation.make_case(region, int(seed) + i, int(matrix))
        cmap = segmentation.class_map(ph.labels, region, ph.truth.get("arms_up"))
        case = f"case_{i:04d}"
        try:
            # names from the integer case index only (tests/test_output_safety.py)
            _write_case(ph, cmap, root / "imagesTr" / f"case_{i:04d}_0000.nii.gz",
                        root / "labelsTr" / f"case_{i:04d}.nii.gz")
        except (OSError, RuntimeError) as exc:
            raise QCInputError(f"cannot write case {case}: {str(exc).strip().splitlines()[-1]}", root) from None
        cases.append({"case": case, "seed": int(seed) + i, "shape_zyx": list(ph.scan.shape),
                      "spacing_zyx_mm": [round(float(s), 6) for s in ph.scan.spacing], "simulator": kw,
                      "classes_present": [classes[c] for c in np.unique(cmap).tolist()]})
        if log is not None:
            log(f"{case}: seed {int(seed) + i}, shape {ph.scan.shape}, {time.perf_counter() - t0:.0f}s")
    dataset = {
        "name": name,
        "description": (f"Simulated {region} CT (ctqc phantoms.simulate, image mode) labelled with "
                        "detectors.segmentation.class_map: the label set of the ctqc MONAI segmenter"),
        "channel_names": {"0": "CT"},
        "labels": {cls: i for i, cls in enumerate(classes)},
        "numTraining": int(n),
        "file_ending": ".nii.gz",
        "ctqc": {"region": region, "seeds": [int(seed), int(seed) + int(n) - 1], "matrix": int(matrix),
                 "command": f"qc export-nnunet --region {region} --n {n} --seed {seed} --matrix {matrix} "
                            f"--dataset-id {dataset_id}", "cases": cases},
    }
    try:
        (root / "dataset.json").write_text(json.dumps(dataset, indent=1, default=_json_default) + "\n")
    except OSError as exc:
        raise QCInputError(f"cannot write output: {exc.strerror}", root / "dataset.json") from None
    return root


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


# ------------------------------------------------------------------------------------------------
# label names -> masks
# ------------------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def _is_lung(n: str) -> bool:
    return n in ("lung", "lungs") or n.startswith("lung_")


def _is_spine(n: str) -> bool:
    return n in ("spine", "vertebrae", "spinal_canal", "spinal_cord") or n.startswith("vertebrae_")


_LENS = ("lens", "lenses", "eye_lens", "lens_left", "lens_right", "eye_lens_left", "eye_lens_right")
_BRAIN_TISSUE = ("csf", "grey_matter", "gray_matter", "white_matter")

#: Output mask -> test on a normalised model label name (lower case, non-alphanumerics -> "_"). A mask is the
#: union of the model labels that pass. ``body_mask`` is special: a model with a label named body/skin/patient
#: (or TotalSegmentator's body_trunc/body_extremities) gives body = the union of *all* its foreground labels
#: (nnU-Net classes are exclusive, so "body" is the tissue no other class took, as in our label set).
MASK_LABELS: dict[str, object] = {
    "lung_mask": _is_lung,
    "intracranial_mask": lambda n: n in ("brain", "intracranial", "intracranial_space", "cerebrum", "cerebellum",
                                         *_BRAIN_TISSUE),
    "skull_mask": lambda n: n in ("skull", "cranium"),
    "csf_mask": lambda n: n == "csf",
    "grey_matter_mask": lambda n: n in ("grey_matter", "gray_matter"),
    "white_matter_mask": lambda n: n == "white_matter",
    "eye_mask": lambda n: n in ("eye_globe", "eye", "eyes", "eyeball", "eye_left", "eye_right", *_LENS),
    "lens_mask": lambda n: n in _LENS,
    "trachea_mask": lambda n: n == "trachea",
    "mediastinum_mask": lambda n: n in ("mediastinum", "heart"),
    "aorta_mask": lambda n: n == "aorta",
    "spine_mask": _is_spine,
    "arms_mask": lambda n: n in ("arms", "arm", "body_extremities"),
    "metal_mask": lambda n: n in ("metal", "metal_implant"),
}
BODY_LABELS = ("body", "skin", "patient", "body_trunc", "body_extremities")


def label_groups(labels: dict) -> dict[str, list[int]]:
    """Model labels (``dataset.json`` ``labels``: name -> int id) -> {mask name: label ids}. Only masks with at
    least one matching label are returned."""
    fg = {_norm(k): int(v) for k, v in labels.items() if int(v) != 0}
    out: dict[str, list[int]] = {}
    if any(n in BODY_LABELS for n in fg):
        out["body_mask"] = sorted(set(fg.values()))
    for mask, test in MASK_LABELS.items():
        ids = sorted({i for n, i in fg.items() if test(n)})
        if ids:
            out[mask] = ids
    return out


def masks_from_labelmap(seg: np.ndarray, groups: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Label map [z, y, x] -> bool masks; an empty mask is a read-only broadcast view of False (as classical)."""
    lut_max = int(max(max(ids) for ids in groups.values())) if groups else 0
    out = {}
    for name, ids in groups.items():
        if len(ids) == 1:
            m = seg == ids[0]
        else:
            lut = np.zeros(max(lut_max, int(seg.max(initial=0))) + 1, dtype=bool)
            lut[ids] = True
            m = lut[seg]
        out[name] = m if m.any() else np.broadcast_to(np.False_, seg.shape)
    return out


# ------------------------------------------------------------------------------------------------
# model folder
# ------------------------------------------------------------------------------------------------

_FOLDER_HINT = "the folder nnUNetv2_train writes: dataset.json, plans.json, fold_X/checkpoint_final.pth"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QCInputError(f"nnU-Net {what} is unreadable ({exc})", path) from None
    if not isinstance(data, dict):
        raise QCInputError(f"nnU-Net {what} is not a JSON object", path)
    return data


@dataclass
class ModelFolder:
    """A validated nnU-Net v2 results folder (no weights loaded yet)."""

    path: Path
    dataset_json: dict
    plans: dict
    checkpoints: list[Path]
    groups: dict[str, list[int]] = field(default_factory=dict)

    @property
    def folds(self) -> list[str]:
        return [c.parent.name.removeprefix("fold_") for c in self.checkpoints]


def inspect_model_folder(model_dir, label_names: dict[int, str] | None = None) -> ModelFolder:
    """Check ``model_dir`` holds an nnU-Net v2 model we can run (files, one CT channel, label names we can map);
    a :class:`QCInputError` names what is missing. ``label_names`` (id -> name) replaces the names of
    ``dataset.json`` (TotalSegmentator ships its names in its package)."""
    path = Path(str(model_dir)).expanduser()
    if not str(model_dir).strip():
        raise QCInputError(f"--segmenter nnunet:MODEL_DIR needs a model folder ({_FOLDER_HINT})")
    if not path.is_dir():
        raise QCInputError(f"nnU-Net model folder not found ({_FOLDER_HINT})", path)
    for fname in ("dataset.json", "plans.json"):
        if not (path / fname).is_file():
            raise QCInputError(f"nnU-Net model folder has no {fname} ({_FOLDER_HINT})", path)
    checkpoints = sorted(p for p in path.glob(f"fold_*/{CHECKPOINT_NAME}") if p.is_file())
    if not checkpoints:
        found = sorted(str(p.relative_to(path)) for p in path.glob("fold_*/*.pth"))
        raise QCInputError(f"nnU-Net model folder has no fold_X/{CHECKPOINT_NAME}"
                           + (f" (found {', '.join(found)}: training did not finish)" if found
                              else f" ({_FOLDER_HINT})"),
                           path)
    ds = _read_json(path / "dataset.json", "dataset.json")
    plans = _read_json(path / "plans.json", "plans.json")
    channels = ds.get("channel_names", ds.get("modality"))
    if not isinstance(channels, dict) or len(channels) != 1:
        raise QCInputError(f"the nnU-Net model expects {len(channels) if isinstance(channels, dict) else '?'} input "
                           f"channels ({channels}); CT quality control gives it one (the CT)", path / "dataset.json")
    labels = ds.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise QCInputError("dataset.json has no 'labels' table", path / "dataset.json")
    if any(not isinstance(v, int) or isinstance(v, bool) for v in labels.values()):
        raise QCInputError("dataset.json labels are regions (lists of ids); only plain label ids are supported",
                           path / "dataset.json")
    if label_names is not None:
        labels = {"background": 0, **{str(v): int(k) for k, v in label_names.items()}}
    groups = label_groups(labels)
    if not groups:
        names = ", ".join(k for k, v in labels.items() if v != 0)
        raise QCInputError(f"none of the model's labels ({names}) names a structure we use; expected label names such "
                           "as body, lungs (or lung_*), brain, skull, lens, eye_globe, trachea, aorta, spine, metal",
                           path / "dataset.json")
    return ModelFolder(path, ds, plans, checkpoints, groups)


def _safe_globals() -> list:
    """What a checkpoint may hold beyond tensors and containers: numpy scalars (nnU-Net's logged Dice/losses)."""
    g = [np.dtype]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    g.append(scalar)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for n in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "Int16DType",
                  "Int8DType", "UInt8DType", "BoolDType"):
            if hasattr(dtypes, n):
                g.append(getattr(dtypes, n))
    return g


def load_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint read as data (``torch.load(weights_only=True)`` + numpy scalars): no code runs."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ck = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:160]
        if "global" not in detail.lower():  # not a refused class: a broken or foreign file
            raise QCInputError(f"checkpoint is unreadable ({detail})", path) from None
        raise QCInputError("checkpoint holds Python objects beyond tensors and numbers; it is loaded with "
                           f"torch.load(weights_only=True) and refused ({detail})", path) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise QCInputError(f"checkpoint is unreadable ({str(exc).strip().splitlines()[0][:160]})", path) from None
    if not isinstance(ck, dict) or not isinstance(ck.get("network_weights"), dict):
        raise QCInputError("not an nnU-Net checkpoint (no 'network_weights')", path)
    return ck


def _check_plans_imports(cm, plans_path: Path) -> None:
    arch = str(cm.network_arch_class_name)
    if not arch.startswith(ALLOWED_ARCH_PREFIXES):
        raise QCInputError(f"plans.json names network class {arch!r}; only classes from "
                           f"{', '.join(ALLOWED_ARCH_PREFIXES)} are built (a plans file must not import other code)",
                           plans_path)
    kw = cm.network_arch_init_kwargs or {}
    for key in cm.network_arch_init_kwargs_req_import or ():
        val = kw.get(key)
        if val is not None and not str(val).startswith(ALLOWED_IMPORT_PREFIXES):
            raise QCInputError(f"plans.json imports {val!r} for {key!r}; only {', '.join(ALLOWED_IMPORT_PREFIXES)} "
                               "is allowed", plans_path)


def _trainer_class(name: str):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if name == "nnUNetTrainer":
        return nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        cls = recursive_find_trainer_class_by_name(name)
    except Exception:  # noqa: BLE001 - nnU-Net raises RuntimeError/AssertionError variants
        cls = None
    return cls


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class NNUNetModel:
    """A loaded model: the nnUNetPredictor, the mask groups and what to write into the result's versions."""

    folder: ModelFolder
    predictor: object
    configuration: str
    trainer: str
    sha256: str

    @property
    def version(self) -> str:
        """``nnunet <dataset>/<model folder> (<trainer> <configuration>, folds ...) sha256:<12 hex>``."""
        dataset = self.folder.plans.get("dataset_name") or self.folder.path.parent.name
        return (f"nnunet {dataset}/{self.folder.path.name} ({self.trainer} {self.configuration}, "
                f"folds {','.join(self.folder.folds)}) sha256:{self.sha256[:12]}")


_MODEL_CACHE: dict = {}


def _device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_model(model_dir, label_names: dict[int, str] | None = None) -> NNUNetModel:
    """Validate, load (as data) and build the model of ``model_dir``; cached per folder and checkpoint files."""
    folder = inspect_model_folder(model_dir, label_names)
    key = (str(folder.path.resolve()), tuple(sorted((label_names or {}).items())),
           tuple((str(c), c.stat().st_mtime_ns, c.stat().st_size) for c in folder.checkpoints))
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError as exc:
        raise QCInputError(f"--segmenter nnunet needs the nnunetv2 package (pip install nnunetv2): {exc}") from None

    params, trainer, configuration, mirror_axes = [], None, None, None
    shas = []
    for ck_path in folder.checkpoints:
        ck = load_checkpoint(ck_path)
        init = ck.get("init_args") if isinstance(ck.get("init_args"), dict) else {}
        t, c = ck.get("trainer_name"), init.get("configuration")
        if not isinstance(t, str) or not isinstance(c, str):
            raise QCInputError("checkpoint lacks trainer_name / init_args.configuration", ck_path)
        if trainer is None:
            trainer, configuration = t, c
            mirror_axes = ck.get("inference_allowed_mirroring_axes")
        elif (t, c) != (trainer, configuration):
            raise QCInputError(f"folds disagree: {t}/{c} vs {trainer}/{configuration}", ck_path)
        params.append(ck["network_weights"])
        shas.append(_sha256(ck_path))
    sha = shas[0] if len(shas) == 1 else hashlib.sha256("\n".join(shas).encode()).hexdigest()
    plans_path = folder.path / "plans.json"
    try:
        pm = PlansManager(folder.plans)
        cm = pm.get_configuration(configuration)
    except Exception as exc:  # noqa: BLE001 - nnU-Net raises KeyError/RuntimeError on malformed plans
        raise QCInputError(f"plans.json has no usable configuration {configuration!r} "
                           f"({type(exc).__name__}: {str(exc)[:120]})", plans_path) from None
    _check_plans_imports(cm, plans_path)
    trainer_cls = _trainer_class(trainer)
    if trainer_cls is None:
        raise QCInputError(f"trainer class {trainer!r} of the checkpoint is not in the installed nnunetv2 "
                           "(set nnUNet_extTrainer for custom trainers)", folder.checkpoints[0])
    import inspect as _inspect

    with contextlib.redirect_stdout(sys.stderr):
        n_in = determine_num_input_channels(pm, cm, folder.dataset_json)
        n_out = pm.get_label_manager(folder.dataset_json).num_segmentation_heads
        if "plans_manager" in _inspect.signature(trainer_cls.build_network_architecture).parameters:
            net = trainer_cls.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=False)
        else:
            net = trainer_cls.build_network_architecture(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                                         cm.network_arch_init_kwargs_req_import, n_in, n_out,
                                                         enable_deep_supervision=False)
        try:
            net.load_state_dict(params[0])
        except RuntimeError as exc:
            raise QCInputError(f"checkpoint weights do not fit plans.json's {configuration} network "
                               f"({str(exc).strip().splitlines()[0][:160]})", folder.checkpoints[0]) from None
        dev = _device()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(net, pm, cm, params, folder.dataset_json, trainer, mirror_axes)
    model = NNUNetModel(folder, predictor, configuration, trainer, sha)
    if len(_MODEL_CACHE) >= 2:  # at most two models (TotalSegmentator runs its total and body models)
        _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
    _MODEL_CACHE[key] = model
    return model


def model_version(model_dir) -> str:
    """What produced the masks, for the JSON result: :attr:`NNUNetModel.version` (sha256 of the checkpoint, or
    of the folds' sha256 list when there are several), plus the masks taken from the classical segmenter."""
    model = load_model(model_dir)
    fallback = [m for m in ("body_mask", "lung_mask", "intracranial_mask") if m not in model.folder.groups]
    return model.version + (f"; classical {', '.join(fallback)}" if fallback else "")


def predict_labelmap(hu: np.ndarray, spacing, model_dir, label_names: dict[int, str] | None = None,
                     flip_xy: bool = False) -> np.ndarray:
    """The model's label map [z, y, x] (same shape as ``hu``). ``flip_xy``: the model was trained on arrays
    stored RAS (x towards the patient's right, y anterior: TotalSegmentator's canonical orientation), so the LPS
    array is flipped in y and x on the way in and the label map flipped back."""
    import torch

    model = load_model(model_dir, label_names)
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise QCInputError(f"segmentation needs a 3-D volume, got shape {hu.shape}")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise QCInputError(f"voxel spacing must be three positive numbers, got {tuple(spacing)}")
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(sys.stderr), torch.inference_mode():
            x = hu[:, ::-1, ::-1] if flip_xy else hu
            seg = model.predictor.predict_single_npy_array(x[None].astype(np.float32),
                                                           {"spacing": [float(s) for s in spacing]})
    finally:
        torch.set_num_threads(threads)
    seg = np.asarray(seg)
    if flip_xy:
        seg = np.ascontiguousarray(seg[:, ::-1, ::-1])
    if seg.shape != hu.shape:  # nnU-Net returns the input grid; anything else is a bug worth naming
        raise RuntimeError(f"nnU-Net returned shape {seg.shape} for input {hu.shape}")
    return seg


def segment(hu: np.ndarray, spacing, model_dir) -> dict[str, np.ndarray]:
    """Masks the model provides (see :data:`MASK_LABELS`); the caller fills the rest (``qc.pipeline``)."""
    model = load_model(model_dir)
    return masks_from_labelmap(predict_labelmap(hu, spacing, model_dir), model.folder.groups)
