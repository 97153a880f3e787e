"""TotalSegmentator backend (``--segmenter totalsegmentator``): its pretrained nnU-Net v2 models, run through our
own nnU-Net path (:mod:`detectors.nnunet_backend`), **only when they are already on disk**.

Nothing is downloaded. TotalSegmentator's own entry point (``totalsegmentator.python_api.totalsegmentator``)
downloads missing weights and sends usage statistics over the network, and loads checkpoints with
``torch.load(weights_only=False)``; we call none of it. From the ``totalsegmentator`` package we take only its
class maps (``totalsegmentator.map_to_binary.class_map``: label id -> name); the weights are the nnU-Net result
folders its ``totalseg_download_weights`` puts under :func:`weights_dir`, loaded as data like any nnU-Net model.

Models and masks (label names mapped by :data:`detectors.nnunet_backend.MASK_LABELS`):

* ``total`` fast (Dataset297, 3 mm; ``totalseg_download_weights -t total_fast``, required): the five lung lobes
  -> ``lung_mask``; brain -> ``intracranial_mask``; skull -> ``skull_mask``; trachea, aorta; heart ->
  ``mediastinum_mask``; vertebrae and spinal cord -> ``spine_mask``. Its other 100 classes are not used.
* ``body`` fast (Dataset300, 6 mm; ``totalseg_download_weights -t body_fast``, optional): body_trunc +
  body_extremities -> ``body_mask``; body_extremities -> ``arms_mask``. Without it the body mask is classical.

Orientation: TotalSegmentator reorients every image to nibabel's canonical RAS before its nnU-Net runs, so
its models were trained on arrays whose x runs to the patient's right and y anteriorly; our LPS arrays are
flipped in y and x on the way in and the label map flipped back. Deviations from TotalSegmentator's own
pipeline: no pre-resampling to 3/6 mm (nnU-Net's preprocessing resamples to the plan's spacing itself), no
body-task post-processing (largest trunk blob, small extremity blobs removed), no test-time mirroring.
Not tested against real weights here (they are not on this machine and are never downloaded); the
missing-weights path is tested.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from qc.errors import QCInputError

#: task -> (nnU-Net dataset id, class map key in totalsegmentator.map_to_binary, result folder, download task)
TASKS = {
    "total": (297, "total", "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres", "total_fast"),
    "body": (300, "body", "nnUNetTrainer__nnUNetPlans__3d_fullres", "body_fast"),
}
REQUIRED = ("total",)


def weights_dir() -> Path:
    """Where TotalSegmentator keeps its weights (as ``totalsegmentator.config.get_weights_dir``):
    ``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``, else
    ``~/.totalsegmentator/nnunet/results`` (``/tmp/.totalsegmentator`` when the home folder is ``/``)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if os.environ.get("TOTALSEG_HOME_DIR"):
        return Path(os.environ["TOTALSEG_HOME_DIR"]) / "nnunet" / "results"
    home = Path("/tmp") if str(Path.home()) == "/" else Path.home()
    return home / ".totalsegmentator" / "nnunet" / "results"


def model_folder(task: str) -> Path | None:
    """The result folder of ``task`` under :func:`weights_dir` when it holds a finished checkpoint, else None."""
    dataset_id, _key, sub, _dl = TASKS[task]
    root = weights_dir()
    for d in sorted(root.glob(f"Dataset{dataset_id:03d}_*")) if root.is_dir() else ():
        if (d / sub / "fold_0" / "checkpoint_final.pth").is_file():
            return d / sub
    return None


def _not_available(reason: str) -> QCInputError:
    where = weights_dir()
    cmds = " and ".join(f"`totalseg_download_weights -t {TASKS[t][3]}`" for t in TASKS)
    return QCInputError(f"{reason}; TotalSegmentator weights not found at {where} (Dataset297_* for the "
                        f"3 mm 'total' model, Dataset300_* for 'body'); install them with `pip install "
                        f"TotalSegmentator` then {cmds}, or point TOTALSEG_WEIGHTS_PATH / TOTALSEG_HOME_DIR at "
                        "existing ones (we never download)")


def available_models() -> dict[str, Path]:
    """{task: model folder} of the TotalSegmentator models on disk; :class:`QCInputError` (saying where we looked
    and how to install them) when the package or the required ``total`` model is missing."""
    if importlib.util.find_spec("totalsegmentator") is None:
        raise _not_available("the totalsegmentator package is not installed")
    found = {t: p for t in TASKS if (p := model_folder(t)) is not None}
    missing = [t for t in REQUIRED if t not in found]
    if missing:
        raise _not_available(f"the {', '.join(missing)} model is missing")
    return found


def class_names(task: str) -> dict[int, str]:
    """Label id -> name of ``task`` from the installed package (``totalsegmentator.map_to_binary.class_map``)."""
    from totalsegmentator.map_to_binary import class_map

    return {int(k): str(v) for k, v in class_map[TASKS[task][1]].items()}


def segment(hu: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """Masks from the TotalSegmentator models on disk (the caller fills the rest from the classical segmenter)."""
    from detectors import nnunet_backend as nb

    out: dict[str, np.ndarray] = {}
    for task, folder in available_models().items():
        names = class_names(task)
        model = nb.load_model(folder, names)
        seg = nb.predict_labelmap(hu, spacing, folder, names, flip_xy=True)
        for name, m in nb.masks_from_labelmap(seg, model.folder.groups).items():
            out.setdefault(name, m)
    return out


def version() -> str:
    """``totalsegmentator <package version> [total: nnunet ... sha256:...; body: ...]`` for the JSON result."""
    import importlib.metadata as md

    from detectors import nnunet_backend as nb

    models = available_models()
    try:
        pkg = md.version("TotalSegmentator")
    except md.PackageNotFoundError:
        pkg = "unknown"
    parts = [f"{t}: {nb.load_model(p, class_names(t)).version}" for t, p in models.items()]
    fallback = ["body_mask"] if "body" not in models else []
    return f"totalsegmentator {pkg} [{'; '.join(parts)}]" + (f"; classical {', '.join(fallback)}" if fallback else "")
