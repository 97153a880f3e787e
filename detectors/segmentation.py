"""Network segmentation (MONAI): a compact 3-D UNet per region, run on a coarse grid and refined with HU.

Design (aimed at the 3 s budget for a 512x512x300 chest on 2 CPU cores; measured by
``benchmarks/bench_segmentation.py``):

1. **Coarse grid.** The scan is block-averaged by integer factors (``np.add.reduceat``: no full-size copy) and
   resampled linearly (:func:`resize_linear`: torch's trilinear = ``scipy.ndimage.zoom(order=1, grid_mode=True)``)
   to an isotropic grid of :data:`TARGET_MM` (head 3 mm, chest 4 mm). A 512x512x300 chest becomes 75x125x125.
2. **Network.** ``monai.networks.nets.UNet`` (3-D, channels 8-16-32-64, strides 2-2-2, one residual unit,
   batch norm) sees three HU windows of the coarse volume (wide -1000..3000, soft tissue -150..150,
   brain/lens 0..120 HU; air = 0 in every channel so that zero padding is air) and predicts the region's
   mutually exclusive classes (:data:`REGION_CLASSES`). At assessment the network runs from its ONNX export on
   ONNX Runtime (detectors/runtime.py: no torch import) with a numpy copy of MONAI's Gaussian sliding window
   (:func:`sliding_window`; one window when the coarse volume fits); a torch model (training, evaluation) runs
   through ``monai.inferers.sliding_window_inference``, on CUDA when available. Eval mode and no dropout make both
   deterministic; they agree to ~4e-5 in the logits (tests/test_runtime.py).
3. **Back to full resolution.** Class probabilities are resampled (linear) to the block grid, arg-maxed and
   expanded by repetition. Boundaries of the classes that have a clear HU edge are then **refined at full
   resolution**: a mask is its eroded coarse core plus, in a one-block band around the coarse boundary, the voxels
   that pass the class's HU test (:data:`REFINE`). The network decides *what* a structure is (skull vs spine,
   lens vs face, trachea vs lung, brain vs scalp); the HU test decides *where* its edge is, at the native pixel size.
   Thin or tiny structures use the band only: skull = dilated network skull AND HU in 350..2000 (above the
   partial-volume rim of cortical bone; metal excluded); lens = dilated network lens AND HU (Gaussian, 0.7 px)
   in 45..250 (lens ~100 HU in a ~10 HU globe and -100 HU orbital fat). The thresholds were chosen on three simulated
   scans (seeds 1,000,000/1/3 of :func:`make_case`) given the *true* coarse labels (refinement alone: skull Dice
   0.993, lens 0.83, brain 0.996); benchmark and tests measure on other seeds. ``metal_mask`` is HU > 2000 inside
   the dilated network body (see :data:`OUTPUT_MASKS`).
4. **Region** for ``compute_masks(scan, 'monai')`` with region auto: :func:`decide_region` (classical masks and
   the region heuristic on the chest network's 4 mm grid, whose block means a chest then reuses).

Known limits: the network has only seen the simulator's anatomy (with a patient table and mattress in 60 % of the
chest training scans since ``seg_chest-3``). The chest model's arms class is practically untrained (the simulator
puts the arms up for every trunk wider than 290 mm); on the real abdomen CT it calls abdominal organs "mediastinum"
(see the benchmark); CSF (a thin rim at 3 mm) has Dice ~0.55. Chest lungs and trachea are HU-gated in the core too
(``core=False``) and kept only where the air is enclosed by the patient (:func:`_enclosed_blocks`, on the block
grid); the network's lungs are then made whole by :func:`_lung_regions` (stray trachea pieces, growth into the thin
air the 4 mm grid misses, gas and size rules). On the shared real abdomen CT: lungs Dice 0.18 (no gating) -> 0.40
(enclosed) -> 0.725 (gas rule) -> 0.962 (``seg_chest-3`` + :func:`_lung_regions`; the classical fallback 0.965).

Label mapping from the phantom tissues (:mod:`phantoms.tissues`) is :func:`class_map` (documented per class there).
Weights are shipped as safetensors under ``detectors/weights/`` and loaded through :mod:`detectors.weights`
(sha256-verified); ``qc train seg --region head|chest`` retrains them on simulated scans.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from qc.errors import QCInputError

#: Network classes per region (index = class id; 0 = outside air). Mutually exclusive.
REGION_CLASSES: dict[str, tuple[str, ...]] = {
    "head": ("background", "body", "skull", "csf", "grey_matter", "white_matter", "eye_globe", "lens", "metal"),
    "chest": ("background", "body", "lungs", "trachea", "mediastinum", "aorta", "spine", "arms", "metal"),
}
#: Coarse isotropic grid (mm) the network runs on.
TARGET_MM = {"head": 3.0, "chest": 4.0}
#: Default architecture of the shipped models (recorded in the manifest, so tests can train smaller ones).
DEFAULT_ARCH = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1, "norm": "batch"}
#: Training patch (z, y, x) in coarse voxels (multiples of 8).
PATCH = {"head": (32, 64, 64), "chest": (32, 80, 80)}
N_INPUT_CHANNELS = 3

# phantom tissue ids (phantoms.tissues.LABELS) -> network class, per region. Unlisted ids -> "body".
_TISSUE_TO_CLASS = {
    "head": {0: "background", 4: "skull", 5: "skull", 8: "csf", 6: "grey_matter", 18: "grey_matter",
             7: "white_matter", 9: "eye_globe", 10: "lens", 17: "metal"},
    "chest": {0: "background", 11: "lungs", 19: "lungs", 14: "trachea", 12: "mediastinum", 13: "aorta",
              5: "spine", 8: "spine", 17: "metal"},
}

_HEAD_BODY = ("body", "skull", "csf", "grey_matter", "white_matter", "eye_globe", "lens", "metal")
_CHEST_BODY = ("body", "lungs", "trachea", "mediastinum", "aorta", "spine", "arms", "metal")
#: Output masks: name -> classes whose union forms it (before refinement). ``metal_mask`` is HU > 2000 anywhere in
#: the (dilated) network body: the network's own metal class is too rare in training (15 % of scans, a 2-5 mm
#: sphere) to be learned in the shipped runs (its held-out Dice was 0), while 2000 HU separates metal from every
#: simulated tissue (cortical bone 1000 HU). Real dense enamel can pass 2000 HU; that is the known limitation.
OUTPUT_MASKS: dict[str, dict[str, tuple[str, ...]]] = {
    "head": {"body_mask": _HEAD_BODY,
             "skull_mask": ("skull",), "intracranial_mask": ("csf", "grey_matter", "white_matter"),
             "csf_mask": ("csf",), "grey_matter_mask": ("grey_matter",), "white_matter_mask": ("white_matter",),
             "eye_mask": ("eye_globe", "lens"), "lens_mask": ("lens",), "metal_mask": _HEAD_BODY},
    "chest": {"body_mask": _CHEST_BODY,
              "lung_mask": ("lungs",), "trachea_mask": ("trachea",), "mediastinum_mask": ("mediastinum",),
              "aorta_mask": ("aorta",), "spine_mask": ("spine",), "arms_mask": ("arms",), "metal_mask": _CHEST_BODY},
}


@dataclass(frozen=True)
class Refine:
    """Full-resolution refinement of one output mask: ``core`` keeps the eroded coarse mask as is; the band
    (one block either side of the coarse boundary, minus blocks of ``forbid`` classes) keeps voxels with
    ``lo < HU < hi`` (HU smoothed by a Gaussian of ``smooth_px`` pixels in-plane when > 0)."""

    lo: float
    hi: float
    core: bool = True
    forbid: tuple[str, ...] = ()
    smooth_px: float = 0.0


REFINE: dict[str, dict[str, Refine]] = {
    "head": {
        "body_mask": Refine(-500.0, 1e9),                      # skin edge, as the classical body threshold
        "skull_mask": Refine(350.0, 2000.0, core=False, forbid=("metal",)),   # bone, not metal
        "intracranial_mask": Refine(-100.0, 200.0, forbid=("background", "body", "eye_globe", "lens")),
        "eye_mask": Refine(-50.0, 250.0, forbid=("skull",), smooth_px=0.7),   # globe (10) + lens (100) vs fat (-100)
        "lens_mask": Refine(45.0, 250.0, core=False, smooth_px=0.7),
        "metal_mask": Refine(2000.0, 1e9, core=False),
    },
    "chest": {
        "body_mask": Refine(-500.0, 1e9),
        "lung_mask": Refine(-1e9, -400.0, core=False, forbid=("background", "trachea")),
        "trachea_mask": Refine(-1e9, -400.0, forbid=("background", "lungs")),
        "arms_mask": Refine(-500.0, 1e9, forbid=("body",)),
        "metal_mask": Refine(2000.0, 1e9, core=False),
    },
}

#: Derived masks for evaluation against the phantom truth (tissue ids per output mask).
TRUTH_TISSUES: dict[str, dict[str, tuple[int, ...]]] = {
    "head": {"skull_mask": (4, 5), "intracranial_mask": (6, 7, 8, 18), "csf_mask": (8,), "grey_matter_mask": (6, 18),
             "white_matter_mask": (7,), "eye_mask": (9, 10), "lens_mask": (10,), "metal_mask": (17,)},
    "chest": {"lung_mask": (11, 19), "trachea_mask": (14,), "mediastinum_mask": (12,), "aorta_mask": (13,),
              "spine_mask": (5, 8), "metal_mask": (17,)},
}


def _check_region(region: str) -> None:
    if region not in REGION_CLASSES:
        raise QCInputError(f"segmentation region must be head or chest, not {region!r}")


def model_name(region: str) -> str:
    return f"seg_{region}"


# ------------------------------------------------------------------------------------------------
# labels
# ------------------------------------------------------------------------------------------------


def arms_truth(labels: np.ndarray) -> np.ndarray:
    """Phantom arms: per slice, every connected piece of the body (tissue id > 0) other than the largest one
    (the trunk). Arms down lie beside the flanks, separated from the trunk by a >= 13 mm gap of air."""
    out = np.zeros(labels.shape, dtype=bool)
    for k in range(labels.shape[0]):
        lab, n = ndi.label(labels[k] > 0)
        if n <= 1:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        out[k] = (lab > 0) & (lab != int(np.argmax(sizes)))
    return out


def class_map(labels: np.ndarray, region: str, arms_up: bool | None = None) -> np.ndarray:
    """Phantom tissue labels -> network class ids of ``region`` (uint8, same shape).

    head: skull = cortical + cancellous bone (skull, skull base and the cervical spine in the field);
    csf = all CSF (ventricles, subarachnoid rim and spinal canal); grey matter includes the cerebellum;
    brain (``intracranial_mask``) = csf + grey + white matter; body = every other tissue (skin, fat, muscle,
    sinus air). chest: lungs include the lung vessels; trachea = trachea + main bronchi; mediastinum = heart
    blood pool; spine = vertebral bodies + spinal canal; arms = body pieces beside the trunk
    (:func:`arms_truth`); body = every other tissue (chest wall, ribs, fat, liver). Metal in both."""
    _check_region(region)
    names = REGION_CLASSES[region]
    lut = np.full(256, names.index("body"), dtype=np.uint8)
    for tissue, cls in _TISSUE_TO_CLASS[region].items():
        lut[tissue] = names.index(cls)
    out = lut[labels]
    if region == "chest" and arms_up is not True:
        arms = arms_truth(labels)
        out[arms & (out != names.index("metal"))] = names.index("arms")
    return out


def truth_masks(labels: np.ndarray, region: str, arms_up: bool | None = None) -> dict[str, np.ndarray]:
    """Full-resolution truth for each output mask of ``region`` (body = hole-filled tissue, per slice)."""
    from phantoms.simulate import _body_from_labels

    out = {"body_mask": _body_from_labels(labels)}
    for name, ids in TRUTH_TISSUES[region].items():
        out[name] = np.isin(labels, ids)
    if region == "chest":
        out["arms_mask"] = arms_truth(labels) if arms_up is not True else np.zeros(labels.shape, dtype=bool)
    return out


# ------------------------------------------------------------------------------------------------
# grids
# ------------------------------------------------------------------------------------------------


@dataclass
class CoarseGrid:
    """Full grid -> block grid (integer factors ``f``) -> isotropic target grid (``target_shape``)."""

    full_shape: tuple[int, int, int]
    f: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    target_shape: tuple[int, int, int]

    @classmethod
    def make(cls, shape, spacing, target_mm: float) -> "CoarseGrid":
        f = tuple(max(1, int(math.floor(target_mm / float(s) + 1e-6))) for s in spacing)
        block = tuple(-(-int(n) // k) for n, k in zip(shape, f))
        target = tuple(max(1, int(round(b * k * float(s) / target_mm))) for b, k, s in zip(block, f, spacing))
        return cls(tuple(int(n) for n in shape), f, block, target)

    def block_mean(self, vol: np.ndarray, fov: np.ndarray | None = None, outside: float = -1000.0) -> np.ndarray:
        """Mean over each f-block (the last block of an axis may be partial), one z-block at a time (reduceat on a
        few slices: no full-size float copy, cache-friendly). Voxels outside ``fov`` (bool, broadcastable to
        ``vol``) count as ``outside``."""
        fz = self.f[0]
        out = np.empty(self.block_shape, dtype=np.float32)
        for b, z0 in enumerate(range(0, vol.shape[0], fz)):
            chunk = np.asarray(vol[z0 : z0 + fz], dtype=np.float32)
            if fov is not None:
                f = fov[z0 : z0 + fz] if fov.shape[0] == vol.shape[0] else fov
                chunk = np.where(f, chunk, np.float32(outside))
            r = chunk.mean(axis=0)
            for axis, k in ((0, self.f[1]), (1, self.f[2])):
                if k == 1:
                    continue
                n = r.shape[axis]
                starts = np.arange(0, n, k)
                counts = (np.minimum(starts + k, n) - starts).astype(np.float32)
                r = np.add.reduceat(r, starts, axis=axis, dtype=np.float32)
                r /= counts.reshape((-1, 1) if axis == 0 else (1, -1))
            out[b] = r
        return out

    def to_target(self, block: np.ndarray) -> np.ndarray:
        """Block grid -> target grid, linear (``[z, y, x]`` or ``[C, z, y, x]``)."""
        return resize_linear(block, self.target_shape)

    def to_block(self, target: np.ndarray) -> np.ndarray:
        """Target grid -> block grid, linear."""
        return resize_linear(target, self.block_shape)

    def z_rows(self, zb: int) -> slice:
        """The full-resolution slices of block row ``zb``."""
        return slice(zb * self.f[0], min((zb + 1) * self.f[0], self.full_shape[0]))

    def plane_up(self, plane: np.ndarray, ys: slice | None = None, xs: slice | None = None) -> np.ndarray:
        """One block-grid plane (covering the block ranges ``ys``, ``xs``; default the whole plane) repeated in-plane
        to full resolution and cropped at the image edge: what one block row of slices needs, without the
        full-size temporary of :meth:`expand`."""
        fy, fx = self.f[1:]
        ny, nx = self.full_shape[1:]
        ys = ys or slice(0, self.block_shape[1])
        xs = xs or slice(0, self.block_shape[2])
        h = min(ys.stop * fy, ny) - ys.start * fy
        w = min(xs.stop * fx, nx) - xs.start * fx
        return plane.repeat(fy, axis=0).repeat(fx, axis=1)[:h, :w]

    def expand(self, block_mask: np.ndarray, bbox=None) -> tuple[tuple[slice, ...], np.ndarray]:
        """Repeat a block-grid mask (optionally its ``bbox`` slices) to full resolution: (full slices, array)."""
        if bbox is None:
            bbox = tuple(slice(0, b) for b in self.block_shape)
        sub = block_mask[bbox]
        for axis, k in enumerate(self.f):
            if k > 1:
                sub = sub.repeat(k, axis=axis)
        full = tuple(slice(s.start * k, min(s.stop * k, n)) for s, k, n in zip(bbox, self.f, self.full_shape))
        sub = sub[tuple(slice(0, fs.stop - fs.start) for fs in full)]
        return full, sub


def resize_linear(vol, shape):
    """Linear resampling of the last three axes to ``shape`` (pixel-area aligned, edges clamped: the same
    values as ``scipy.ndimage.zoom(order=1, grid_mode=True, mode='nearest')`` and torch's trilinear
    ``align_corners=False``). A numpy array is resampled with numpy (:func:`_resize_linear_np`; assessment must not
    import torch), a torch tensor stays a tensor (training)."""
    shape = tuple(int(s) for s in shape)
    if tuple(vol.shape[-3:]) == shape:
        return vol
    if isinstance(vol, np.ndarray):
        return _resize_linear_np(vol, shape)
    import torch.nn.functional as F

    lead = vol.shape[:-3]
    t = vol.reshape((1, -1) + tuple(vol.shape[-3:]))
    return F.interpolate(t, size=shape, mode="trilinear", align_corners=False).reshape(tuple(lead) + shape)


def _resize_linear_np(vol: np.ndarray, shape) -> np.ndarray:
    """Separable linear interpolation, one axis at a time, with torch's source index for ``align_corners=False``
    (``(i + 0.5) n / m - 0.5``, clamped at 0; the upper neighbour clamped at n - 1). Written here because
    ``scipy.ndimage.zoom(order=1, grid_mode=True)`` computes the same values ~20x slower (a full spline machinery
    for a 2-tap filter) and torch is what we avoid importing; only coarse grids (<= a few M voxels) come here.
    The in-plane axes go through OpenCV's bilinear ``resize`` when it is installed (the same half-pixel source
    index, equal to 2e-7; 10x faster than the ``take`` path: 0.05 vs 0.48 s for the chest network's 9 class maps
    of 75 x 125 x 125)."""
    out = np.asarray(vol, dtype=np.float32)
    nd = out.ndim
    if tuple(out.shape[-2:]) != tuple(shape[-2:]):
        try:
            import cv2
        except ImportError:
            cv2 = None
        if cv2 is not None:
            flat = out.reshape((-1,) + out.shape[-2:])
            res = np.empty((flat.shape[0],) + tuple(shape[-2:]), dtype=np.float32)
            for i in range(flat.shape[0]):
                res[i] = cv2.resize(flat[i], (int(shape[-1]), int(shape[-2])), interpolation=cv2.INTER_LINEAR)
            out = res.reshape(out.shape[:-2] + tuple(shape[-2:]))
    for k, m in enumerate(shape):
        axis = nd - 3 + k
        n = out.shape[axis]
        if n == m:
            continue
        src = np.maximum((np.arange(m, dtype=np.float64) + 0.5) * (n / m) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.intp), n - 1)
        i1 = np.minimum(i0 + 1, n - 1)
        w = (src - i0).astype(np.float32)
        bshape = [1] * nd
        bshape[axis] = m
        w = w.reshape(bshape)
        a = np.take(out, i0, axis=axis)
        b = np.take(out, i1, axis=axis)
        b -= a
        b *= w
        a += b
        out = a
    return out


def network_input(coarse_hu: np.ndarray) -> np.ndarray:
    """Three HU windows (channels first), each 0 for air so that zero padding means air:
    wide (HU + 1000) / 1000 in [0, 4]; soft tissue (HU + 150) / 300 in [0, 1]; brain/lens HU / 120 in [0, 1]."""
    h = coarse_hu
    return np.stack([np.clip((h + 1000.0) / 1000.0, 0.0, 4.0), np.clip((h + 150.0) / 300.0, 0.0, 1.0),
                     np.clip(h / 120.0, 0.0, 1.0)]).astype(np.float32)


def coarse_block(hu: np.ndarray, spacing, region: str, fov: np.ndarray | None = None) -> tuple[CoarseGrid, np.ndarray]:
    """(grid, HU block means on the block grid). Voxels outside ``fov`` count as air."""
    grid = CoarseGrid.make(hu.shape, spacing, TARGET_MM[region])
    if fov is not None and fov.strides and fov.strides[0] == 0 and fov.strides[-1] == 0 and bool(fov.flat[0]):
        fov = None  # an all-True broadcast field of view
    return grid, grid.block_mean(hu, fov)


def coarse_hu(hu: np.ndarray, spacing, region: str, fov: np.ndarray | None = None) -> tuple[CoarseGrid, np.ndarray]:
    """(grid, HU on the isotropic target grid). Voxels outside ``fov`` count as air."""
    grid, block = coarse_block(hu, spacing, region, fov)
    return grid, grid.to_target(np.clip(block, -1024.0, 3071.0))


def coarse_classes(cmap: np.ndarray, spacing, region: str) -> np.ndarray:
    """Training target on the target grid: per-class block fractions, resampled linearly, arg-maxed.
    Lens and metal fractions count 3x (they are smaller than a coarse voxel and would otherwise vanish)."""
    names = REGION_CLASSES[region]
    grid = CoarseGrid.make(cmap.shape, spacing, TARGET_MM[region])
    weight = np.ones(len(names), dtype=np.float32)
    for boost in ("lens", "metal"):
        if boost in names:
            weight[names.index(boost)] = 3.0
    fr = np.stack([grid.to_target(grid.block_mean((cmap == c).astype(np.float32))) * weight[c]
                   for c in range(len(names))])
    return fr.argmax(axis=0).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# network
# ------------------------------------------------------------------------------------------------


def build_network(region: str, arch: dict | None = None):
    """The MONAI UNet of ``region`` with architecture ``arch`` (default :data:`DEFAULT_ARCH`)."""
    from monai.networks.nets import UNet

    a = {**DEFAULT_ARCH, **(arch or {})}
    return UNet(spatial_dims=3, in_channels=N_INPUT_CHANNELS, out_channels=len(REGION_CLASSES[region]),
                channels=tuple(a["channels"]), strides=tuple(a["strides"]), num_res_units=int(a["num_res_units"]),
                norm=a["norm"])


_MODEL_CACHE: dict = {}


def load_model(region: str, manifest: Path | None = None):
    """(network in eval mode on the inference device, manifest entry) for the shipped model of ``region``.
    The weights file is sha256-verified against the manifest (:class:`detectors.weights.WeightsError` if not)."""
    from detectors import weights

    _check_region(region)
    manifest = Path(manifest) if manifest is not None else weights.MANIFEST
    entry = weights.model_entry(model_name(region), manifest)
    key = (region, str(manifest.resolve()), entry.get("sha256"))
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    state = weights.load_tensors(model_name(region), manifest)
    net = build_network(region, entry.get("architecture"))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise weights.WeightsError(f"weights do not fit the recorded architecture ({str(exc).splitlines()[0][:120]})",
                                   manifest.parent / entry["file"]) from None
    net.eval().to(_device())
    _MODEL_CACHE.clear()
    _MODEL_CACHE[key] = (net, entry)
    return net, entry


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: Largest sliding window (coarse voxels z, y, x); a 512 x 512 x 300 chest at 4 mm is one window.
MAX_ROI = (96, 160, 160)


def _roi(shape, max_roi=MAX_ROI) -> tuple[int, ...]:
    """Sliding-window size: the coarse volume rounded up to multiples of 8 (the UNet's total stride), capped."""
    return tuple(min(m, 8 * math.ceil(s / 8)) for s, m in zip(shape, max_roi))


#: Coarse slices replicated beyond the first and last slice before inference (see :func:`predict_probs`).
Z_EXTEND = 6


def predict_probs(net, coarse: np.ndarray, max_roi=MAX_ROI):
    """Softmax class probabilities [C, z, y, x] on the target grid (sliding window, one window when it fits).
    ``net`` is the ONNX export (:class:`detectors.runtime.OnnxNet`: numpy in and out, :func:`sliding_window`) or a
    torch module (training and evaluation: ``monai.inferers.sliding_window_inference``, a CPU torch tensor out).

    The scan's first and last coarse slices are replicated :data:`Z_EXTEND` times outward first: a CT scan ends
    where the table stopped, not where the anatomy ends, and with air (zero) padding the network read the scan edge
    as the end of the organ (lungs invented beside the trachea in the top slice of a chest, a shrunken cranial
    cavity in the bottom slice of a head: coverage IQMs off by 15 mm)."""
    from detectors.runtime import OnnxNet, TorchFn

    ext = Z_EXTEND if coarse.shape[0] > 1 else 0
    if ext:
        coarse = np.pad(coarse, ((ext, ext), (0, 0), (0, 0)), mode="edge")
    roi = _roi(coarse.shape, max_roi)
    x = network_input(coarse)[None]
    if isinstance(net, (OnnxNet, TorchFn)):
        logits = sliding_window(lambda p: net(p)[0], x, roi)[0]
        if ext:
            logits = np.ascontiguousarray(logits[:, ext:-ext])
        logits -= logits.max(axis=0, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=0, keepdims=True)
        return logits
    import torch
    from monai.inferers import sliding_window_inference

    dev = next(net.parameters()).device
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(x).to(dev), roi_size=roi, sw_batch_size=1, predictor=net,
                                          overlap=0.25, mode="gaussian", padding_mode="constant", cval=0.0)
        if ext:
            logits = logits[:, :, ext:-ext]
        probs = torch.softmax(logits[0].float(), dim=0)
    return probs.cpu()


def _gaussian_importance(roi, sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's 'gaussian' window weight (``monai.data.utils.compute_importance_map``): the separable Gaussian of
    sigma = sigma_scale x window size sampled about the window centre, clamped below at 1e-3."""
    w = np.ones((), dtype=np.float32)
    for n in roi:
        x = np.arange(n, dtype=np.float32) - (n - 1) / 2.0
        w = np.multiply.outer(w, np.exp(x**2 / (-2 * (sigma_scale * n) ** 2)).astype(np.float32))
    return np.maximum(w, max(float(w.min()), 1e-3)).astype(np.float32)


def sliding_window(fn, x: np.ndarray, roi, overlap: float = 0.25) -> np.ndarray:
    """``fn`` applied over windows of ``roi`` on ``x`` [1, C, z, y, x] and blended with Gaussian weights: the
    scheme of ``monai.inferers.sliding_window_inference(mode='gaussian', padding_mode='constant', cval=0)``
    (symmetric zero padding up to the window, steps of (1 - overlap) x window, the last window flush with the end).
    Re-implemented in numpy because MONAI's needs torch tensors, and assessment runs ONNX Runtime without torch;
    tests check it against MONAI's."""
    spatial = x.shape[2:]
    pads = [((r - s) // 2, (r - s) - (r - s) // 2) if r > s else (0, 0) for r, s in zip(roi, spatial)]
    xp = np.pad(x, [(0, 0), (0, 0)] + pads) if any(p != (0, 0) for p in pads) else x
    size = xp.shape[2:]
    starts = []
    for r, n in zip(roi, size):
        step = max(int(r * (1 - overlap)), 1)
        k = max(math.ceil((n - r) / step), 0) + 1
        starts.append(sorted({min(i * step, n - r) for i in range(k)}))
    acc = None
    if all(len(st) == 1 for st in starts):
        acc = fn(xp)
    else:
        wmap = _gaussian_importance(roi)
        wsum = np.zeros(size, dtype=np.float32)
        for z0 in starts[0]:
            for y0 in starts[1]:
                for x0 in starts[2]:
                    sl = (slice(z0, z0 + roi[0]), slice(y0, y0 + roi[1]), slice(x0, x0 + roi[2]))
                    out = fn(np.ascontiguousarray(xp[(slice(None), slice(None)) + sl]))
                    if acc is None:
                        acc = np.zeros(out.shape[:2] + tuple(size), dtype=np.float32)
                    acc[(slice(None), slice(None)) + sl] += out * wmap
                    wsum[sl] += wmap
        acc /= wsum
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, spatial))
    return np.ascontiguousarray(acc[(slice(None), slice(None)) + crop], dtype=np.float32)


def default_model(region: str):
    """The network :func:`segment` runs when given none: the ONNX export (no torch import) when it verifies, else
    the torch model; None when neither is available."""
    from detectors import runtime

    return runtime.default_model(model_name(region), lambda: load_model(region)[0])


# ------------------------------------------------------------------------------------------------
# inference
# ------------------------------------------------------------------------------------------------


def segment(hu: np.ndarray, spacing, region: str, fov: np.ndarray | None = None, manifest: Path | None = None,
            net=None, outputs=None, coarse=None) -> dict[str, np.ndarray]:
    """Network masks of ``region`` at full resolution: ``dict`` name -> bool ``[z, y, x]`` (names in
    :data:`OUTPUT_MASKS`, or only those in ``outputs``; ``body_mask``/``lung_mask``/``intracranial_mask`` are always
    present, empty ones as read-only broadcast views of False like :func:`detectors.classical.segment`). ``net``
    overrides the shipped model (training/tests). ``coarse``: ``(grid, block)`` from :func:`coarse_block` of this
    scan (e.g. computed for :func:`decide_region`); used when its grid is this region's."""
    from detectors.runtime import OnnxNet, TorchFn

    _check_region(region)
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise QCInputError(f"segmentation needs a 3-D volume, got shape {hu.shape}")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise QCInputError(f"voxel spacing must be three positive numbers, got {tuple(spacing)}")
    if net is None:
        net = default_model(region) if manifest is None else load_model(region, manifest)[0]
        if net is None:
            from detectors.weights import WeightsError

            raise WeightsError(f"no shipped segmentation network for {region} (ONNX export or torch weights)")
    if coarse is not None and coarse[0] == CoarseGrid.make(hu.shape, spacing, TARGET_MM[region]):
        grid, block = coarse
    else:
        grid, block = coarse_block(hu, spacing, region, fov)
    target_hu = grid.to_target(np.clip(block, -1024.0, 3071.0))
    if not isinstance(net, (OnnxNet, TorchFn)):  # a torch module (training, evaluation)
        import torch

        torch.set_num_threads(min(2, torch.get_num_threads()))
    labels_b = _argmax_channels(grid.to_block(predict_probs(net, target_hu)))
    enclosed = _enclosed_blocks(block)
    if region == "chest":
        _lung_regions(labels_b, block, enclosed, grid, spacing)
    out = masks_from_block_labels(labels_b, grid, hu, region, outputs)
    if region == "chest":
        for name in ("lung_mask", "trachea_mask"):
            if name in out and out[name].any():
                out[name] = _keep_enclosed(out[name], enclosed, grid)
    if out["body_mask"].any():
        out["body_mask"] = _fill_enclosed(out["body_mask"], enclosed, grid)
    return out


#: Lung growth (blocks, 6-connected) from the network's lungs into the adjoining air blocks (< -400 HU, enclosed by
#: the patient, not trachea): see :func:`_lung_regions`.
LUNG_GROW_BLOCKS = 8
#: A network "trachea" piece smaller than this (mL) with lung-like HU that touches the lungs is lung (see
#: :func:`_lung_regions`): the trachea and main bronchi hold tens of mL.
TRACHEA_MIN_ML = 5.0
#: Smallest lung region kept (mL), or 5 cm2 per slice for thin stacks as in the classical fallback.
LUNG_MIN_ML = 5.0


def _lung_regions(labels_b: np.ndarray, block: np.ndarray, enclosed_b: np.ndarray, grid: CoarseGrid, spacing) -> None:
    """The network's lungs made whole, in place on the block grid: the network decides which air is lung, the HU
    how far it reaches (its edge is then drawn at full resolution by :data:`REFINE`).

    1. **stray trachea**: a network trachea piece smaller than :data:`TRACHEA_MIN_ML` that touches the lungs and is not
       gas (median block HU above :data:`detectors.classical.LUNG_MEDIAN_MIN_HU`, i.e. parenchyma, not an airway
       lumen) is lung. On the shared real abdomen CT the network called three 1-2 mL pieces of the lung bases
       "trachea";
    2. **growth**: the lungs grow by up to :data:`LUNG_GROW_BLOCKS` blocks (32 mm on the 4 mm grid) into adjoining
       air blocks (block mean < -400 HU, enclosed by the patient, not called trachea). The network runs at 4 mm and
       drops lung thinner than a block: on the shared real abdomen CT it missed the thin crescents over the domes.
       Growth stops at tissue, so it cannot reach gas that the diaphragm separates from the lungs; the limit bounds
       how far it can follow a partial-volume bridge into bowel gas. Measured on that CT with ``seg_chest-3`` (lungs
       Dice; classical 0.965): no growth 0.868, 3 blocks 0.930, 8 blocks 0.962, 20 blocks 0.965 (the region is then
       the whole air component, as in the classical mask); on 8 held-out simulated chests 0.9815 without growth,
       0.982 with 3-20 blocks;
    3. **gas**: a connected lung region whose median block HU is below
       :data:`detectors.classical.LUNG_MEDIAN_MIN_HU` is gas (bowel, stomach: about -1000 HU; lung parenchyma
       -900..-700) and becomes "body" (the classical fallback's rule);
    4. **size**: a region smaller than :data:`LUNG_MIN_ML` (or 5 cm2 per slice for thin stacks) is dropped (the
       network's stray lung calls on that CT were 1-3 mL pieces of stomach gas).

    The gas and size tests run on the grown regions."""
    from detectors.classical import AIR_INSIDE_HU, gas_components

    names = REGION_CLASSES["chest"]
    lung_id, body_id, trachea_id = names.index("lungs"), names.index("body"), names.index("trachea")
    net_lung = labels_b == lung_id
    if not net_lung.any():
        return
    block_ml = float(np.prod([s * k for s, k in zip(spacing, grid.f)])) / 1000.0
    seeds = net_lung
    trachea = labels_b == trachea_id
    if TRACHEA_MIN_ML > 0 and trachea.any():
        lab, n = ndi.label(trachea)
        flip = np.bincount(lab.ravel(), minlength=n + 1) * block_ml < TRACHEA_MIN_ML
        touching = np.zeros(n + 1, dtype=bool)
        touching[np.unique(lab[ndi.binary_dilation(net_lung) & trachea])] = True
        flip &= touching & ~gas_components(block, lab, n)
        flip[0] = False
        if flip.any():
            seeds = net_lung | flip[lab]
            trachea = trachea & ~flip[lab]
    lung = seeds & enclosed_b
    if LUNG_GROW_BLOCKS > 0:
        air = (block < AIR_INSIDE_HU) & enclosed_b & ~trachea
        lung = ndi.binary_dilation(lung, structure=ndi.generate_binary_structure(3, 1), iterations=LUNG_GROW_BLOCKS,
                                   mask=air | lung)
    lab, n = ndi.label(lung)
    if n:
        min_ml = min(LUNG_MIN_ML, 0.5 * grid.full_shape[0] * float(spacing[0]))
        drop = gas_components(block, lab, n)
        drop |= np.bincount(lab.ravel(), minlength=n + 1) * block_ml < min_ml
        drop[0] = False
        lung &= ~drop[lab]
    labels_b[net_lung & ~lung] = body_id
    labels_b[lung] = lung_id


def _enclosed_blocks(block: np.ndarray) -> np.ndarray:
    """Blocks enclosed by the patient: per axial slice of the block grid, the hole-filled region of block means
    > -500 HU. The network's lung region is an HU band around coarse 4 mm labels; on real scans it also reached air
    outside the skin (the shared abdomen CT: 2/3 of the 'lung' voxels were room air; lungs Dice 0.18 -> see
    benchmarks/bench_segmentation.py). Judged on the block grid (a 16x smaller slice; the test at full resolution
    took 2.4 s of a 512 x 512 x 300 chest): a block straddling the skin counts as outside when it is mostly air,
    and lungs lie several blocks inside the skin."""
    out = block > -500.0
    for k in range(out.shape[0]):
        out[k] = ndi.binary_fill_holes(out[k])
    return out


def _fill_enclosed(body: np.ndarray, enclosed_b: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    """The body mask plus every block at least one block inside the patient's outline (:func:`_enclosed_blocks`
    eroded in-plane by one block): gas inside the patient (bowel, lungs at the edge of the network's band, sinuses)
    is body, as in the classical hole-filled mask. On the shared real abdomen CT, 3 % of the reference-labelled voxels
    (colon gas, lung) were outside the network body without it (benchmarks/bench_segmentation.py)."""
    inner = np.zeros_like(enclosed_b)
    for k in range(enclosed_b.shape[0]):
        inner[k] = ndi.binary_erosion(enclosed_b[k], iterations=1, border_value=0)
    for zb in np.nonzero(inner.any(axis=(1, 2)))[0]:
        body[grid.z_rows(zb)] |= grid.plane_up(inner[zb])
    return body


def _keep_enclosed(mask: np.ndarray, enclosed_b: np.ndarray, grid: CoarseGrid) -> np.ndarray:
    """``mask`` (a freshly built, writeable mask: changed in place) restricted to the voxels whose block is enclosed
    by the patient (:func:`_enclosed_blocks`), one block row of slices at a time (no full-size temporaries)."""
    fz = grid.f[0]
    zs = _bbox(mask)[0]
    for zb in range(zs.start // fz, -(-zs.stop // fz)):
        mask[grid.z_rows(zb)] &= grid.plane_up(enclosed_b[zb])
    return mask


def decide_region(hu: np.ndarray, spacing, fov: np.ndarray | None = None, coarse=None):
    """Head / chest / other for the network path, cheaply: the classical masks and the region heuristic
    (:func:`detectors.region.classify_region`) on the chest network's 4 mm grid instead of the full grid. ``coarse``:
    the ``(grid, block)`` of :func:`coarse_block` for the chest, when the caller has it (the chest segmentation
    reuses it: :func:`segment`'s ``coarse``). Agrees with the full-grid decision and with the 3 mm grid used before
    on the shared real head, chest, abdomen CTs and single slices and on 11 simulated heads and chests (128-512
    matrices, 1.25-5 mm slices, shifted, yawed, with a table); the 3 mm grid cost 0.6 s of a 512 x 512 x 300 chest
    on a busy machine, this one ~0.2 s plus the block means the segmentation needs anyway."""
    from detectors import classical
    from detectors.region import classify_region

    grid, block = coarse if coarse is not None else coarse_block(hu, spacing, "chest", fov)
    c = grid.to_target(np.clip(block, -1024.0, 3071.0))
    m = classical.segment(c, (TARGET_MM["chest"],) * 3, None)
    return classify_region(m["body_mask"], m["lung_mask"], m["intracranial_mask"])


def _argmax_channels(p) -> np.ndarray:
    """uint8 arg-max over the first axis of a [C, ...] array or tensor as a running maximum (a strided
    ``argmax(dim=0)`` is ~10x slower on CPU). Ties go to the lower class, as with argmax."""
    if isinstance(p, np.ndarray):
        best = p[0].copy()
        lab = np.zeros(p.shape[1:], dtype=np.uint8)
        for c in range(1, p.shape[0]):
            better = p[c] > best
            np.copyto(best, p[c], where=better)
            lab[better] = c
        return lab
    import torch

    best = p[0].clone()
    lab = torch.zeros(p.shape[1:], dtype=torch.uint8)
    for c in range(1, p.shape[0]):
        better = p[c] > best
        best = torch.where(better, p[c], best)
        lab.masked_fill_(better, c)
    return lab.numpy()


def _bbox(mask: np.ndarray):
    idx = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)


def masks_from_block_labels(labels_b: np.ndarray, grid: CoarseGrid, hu: np.ndarray, region: str,
                            outputs=None) -> dict[str, np.ndarray]:
    """Block-grid class labels -> full-resolution masks (all of :data:`OUTPUT_MASKS`, or the names in ``outputs``:
    each full-size mask costs one byte per voxel), with the HU refinement of :data:`REFINE`."""
    names = REGION_CLASSES[region]
    empty = np.broadcast_to(np.False_, grid.full_shape)
    out: dict[str, np.ndarray] = {}
    ball = ndi.generate_binary_structure(3, 1)
    for mname, classes in OUTPUT_MASKS[region].items():
        if outputs is not None and mname not in outputs:
            continue
        m = np.isin(labels_b, [names.index(c) for c in classes])
        if not m.any():
            out[mname] = empty
            continue
        rule = REFINE[region].get(mname)
        full = np.zeros(grid.full_shape, dtype=bool)
        if rule is None:
            sl, sub = grid.expand(m, _bbox(m))
            full[sl] = sub
            out[mname] = full
            continue
        # morphology on the mask's bounding box grown by one block (small structures cost almost nothing)
        bb = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(_bbox(m), m.shape))
        mb = m[bb]
        dil = ndi.binary_dilation(mb, structure=ball)
        core = ndi.binary_erosion(mb, structure=ball, border_value=1) if rule.core else np.zeros_like(mb)
        band = dil & ~core
        if rule.forbid:
            band &= ~np.isin(labels_b[bb], [names.index(c) for c in rule.forbid if c in names])
        if not (band | core).any():
            out[mname] = empty
            continue
        # full resolution, one block row of slices at a time: no full-size temporaries (bench_memory.py)
        fy, fx = grid.f[1:]
        y0, x0 = bb[1].start * fy, bb[2].start * fx
        y1, x1 = min(bb[1].stop * fy, grid.full_shape[1]), min(bb[2].stop * fx, grid.full_shape[2])
        for i in range(core.shape[0]):
            if not (band[i].any() or core[i].any()):
                continue
            zr = grid.z_rows(bb[0].start + i)
            core_up = grid.plane_up(core[i], bb[1], bb[2])
            band_up = grid.plane_up(band[i], bb[1], bb[2])
            h = hu[zr, y0:y1, x0:x1]
            if rule.smooth_px > 0:
                h = ndi.gaussian_filter(h.astype(np.float32), sigma=(0, rule.smooth_px, rule.smooth_px))
            dst = full[zr, y0:y1, x0:x1]  # a view: the HU tests write straight into the output
            if rule.lo > -1e8:
                np.greater(h, rule.lo, out=dst)
                if rule.hi < 1e8:
                    dst &= h < rule.hi
            else:
                np.less(h, rule.hi, out=dst)
            dst &= band_up
            dst |= core_up
        out[mname] = full if full.any() else empty
    for required in ("body_mask", "lung_mask", "intracranial_mask"):
        out.setdefault(required, empty)
    return out


# ------------------------------------------------------------------------------------------------
# data and training
# ------------------------------------------------------------------------------------------------


def random_case(region: str, rng: np.random.Generator, matrix: int) -> dict:
    """Simulator arguments for one training/held-out case: patient size and shape come from the simulator's own
    seed; position, rotation, dose, kernel, slice thickness, arms, (in ~1 of 4 cases) an artifact, (chest, 3 of 10
    cases) a scan range reaching ``below_base_mm`` below the lung bases (:func:`make_case` turns it into ``z_start``)
    and (chest, 6 of 10 cases) the patient table (:func:`phantoms.anatomy.patient_table`) are drawn here."""
    kw: dict = dict(matrix=matrix, kernel=str(rng.choice(["smooth", "sharp"])),
                    shift_x=float(rng.uniform(-30, 30)), shift_y=float(rng.uniform(-30, 30)),
                    yaw=float(rng.uniform(-12, 12)))
    if region == "head":
        kw.update(mas=float(rng.uniform(120, 500)), pitch=float(rng.uniform(-15, 15)), roll=float(rng.uniform(-8, 8)),
                  slice_mm=float(rng.choice([1.25, 2.5, 2.5, 5.0])))
    else:
        kw.update(mas=float(rng.uniform(25, 200)), slice_mm=float(rng.choice([1.25, 2.5, 5.0, 5.0])),
                  arms_up=bool(rng.random() < 0.5))
    u = rng.random()
    if u < 0.15:
        kw["artifacts"] = {"metal": float(rng.uniform(0.5, 1.0))}
    elif u < 0.25:
        kw["artifacts"] = {str(rng.choice(["ring", "motion", "beam_hardening"])): float(rng.uniform(0.3, 0.8))}
    if region == "chest" and rng.random() < 0.3:
        # the scan reaches 40-120 mm below the costophrenic angles (upper abdomen, with its bowel gas) instead of 20
        kw["below_base_mm"] = float(rng.uniform(40, 120))
    if region == "chest" and rng.random() < 0.6:
        # patient table and mattress (drawn last: every earlier draw of a seed is as before the table existed)
        kw["table"] = True
    return kw


def case_kwargs(region: str, seed: int, matrix: int) -> dict:
    """The simulator arguments of case ``seed`` (drawn by :func:`random_case` from ``[seed, 31337]``)."""
    return random_case(region, np.random.default_rng([seed, 31337]), matrix)


def make_case(region: str, seed: int, matrix: int):
    """One simulated case: (phantom, simulator kwargs). The case's parameters are drawn from ``seed`` too."""
    from phantoms import simulate
    from phantoms.simulate import probe_truth

    kw = case_kwargs(region, seed, matrix)
    sim = dict(kw)
    below = sim.pop("below_base_mm", None)
    if below is not None:
        pose = {k: sim[k] for k in ("shift_x", "shift_y", "yaw", "arms_up") if k in sim}
        sim["z_start"] = probe_truth(region, seed, **pose)["lung_base_z_mm"] - below
    return simulate(region, seed, **sim), kw


def training_volumes(region: str, seeds, matrices) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(network input [3, z, y, x], target classes [z, y, x])] on the coarse grid, one per seed."""
    out = []
    for i, seed in enumerate(seeds):
        ph, _kw = make_case(region, int(seed), int(matrices[i % len(matrices)]))
        _grid, c = coarse_hu(ph.scan.hu, ph.scan.spacing, region, ph.scan.fov)
        target = coarse_classes(class_map(ph.labels, region, ph.truth.get("arms_up")), ph.scan.spacing, region)
        out.append((network_input(c), target))
    return out


def _pad_to(x: np.ndarray, shape) -> np.ndarray:
    pads = [(0, 0)] * (x.ndim - 3) + [(0, max(0, s - n)) for s, n in zip(shape, x.shape[-3:])]
    return np.pad(x, pads) if any(p[1] for p in pads) else x


def _sample_patch(vol, target, patch, rng, n_classes):
    """A random patch; half of them centred on a voxel of a randomly chosen class present (rare classes seen)."""
    x = _pad_to(vol, patch)
    y = _pad_to(target, patch)
    shape = y.shape
    if rng.random() < 0.5:
        present = [c for c in range(1, n_classes) if (y == c).any()]
        c = int(rng.choice(present)) if present else 0
        zz, yy, xx = np.nonzero(y == c)
        j = int(rng.integers(zz.size))
        centre = (zz[j], yy[j], xx[j])
    else:
        centre = tuple(int(rng.integers(s)) for s in shape)
    start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, shape)]
    sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
    return x[(slice(None),) + sl], y[sl]


def train(region: str, data, iterations: int, seed: int = 0, arch: dict | None = None, patch=None,
          batch: int = 2, lr: float = 3e-3, max_minutes: float | None = None, log=None, init_state: dict | None = None):
    """Train a UNet on ``data`` (from :func:`training_volumes`) with Dice + cross-entropy (MONAI
    ``DiceCELoss``, batch Dice) and Adam (learning rate cosine-annealed to 5 % over the iterations, or over
    ``max_minutes`` when that comes first: a time-limited run still ends at a low rate). A fresh network, or one
    starting from ``init_state`` (a state dict of the same architecture: fine-tuning). Returns (net, iterations
    done)."""
    import torch
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rng = np.random.default_rng(seed)
    n_classes = len(REGION_CLASSES[region])
    patch = tuple(patch or PATCH[region])
    net = build_network(region, arch)
    if init_state is not None:
        net.load_state_dict(init_state)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    t0 = time.perf_counter()
    done = 0
    for it in range(iterations):
        # cosine learning rate over the run's progress: iterations, or elapsed time when a time limit is set
        progress = it / iterations
        if max_minutes is not None:
            progress = max(progress, (time.perf_counter() - t0) / (60.0 * max_minutes))
        for g in opt.param_groups:
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))
        xs, ys = zip(*(_sample_patch(*data[int(rng.integers(len(data)))], patch, rng, n_classes) for _ in range(batch)))
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys)[:, None].astype(np.int64))
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        done = it + 1
        if log is not None and (it % 50 == 0 or it == iterations - 1):
            log(f"it {it} loss {float(loss.detach()):.4f} {time.perf_counter() - t0:.0f}s")
        if max_minutes is not None and time.perf_counter() - t0 > 60.0 * max_minutes:
            if log is not None:
                log(f"time limit reached after {done} iterations")
            break
    net.eval()
    return net, done


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two masks; None when both are empty (undefined, not averaged)."""
    sa, sb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if sa + sb == 0:
        return None
    return 2.0 * int(np.count_nonzero(a & b)) / (sa + sb)


def evaluate(region: str, seeds, matrix: int = 256, net=None, manifest: Path | None = None,
             classical: bool = True) -> dict:
    """Held-out Dice per output mask (mean over cases where defined), network vs the classical fallback for
    body / lungs / brain, plus the mean network inference time. Cases come from :func:`make_case`."""
    from detectors import classical as cl

    per: dict[str, list[float]] = {}
    per_cl: dict[str, list[float]] = {}
    times = []
    for seed in seeds:
        ph, _kw = make_case(region, int(seed), matrix)
        truth = truth_masks(ph.labels, region, ph.truth.get("arms_up"))
        t = time.perf_counter()
        pred = segment(ph.scan.hu, ph.scan.spacing, region, ph.scan.fov, manifest=manifest, net=net)
        times.append(time.perf_counter() - t)
        for name, tm in truth.items():
            d = dice(pred[name], tm)
            if d is not None:
                per.setdefault(name, []).append(d)
        if classical:
            cm = cl.segment(ph.scan.hu, ph.scan.spacing, ph.scan.fov)
            for name in ("body_mask", "lung_mask", "intracranial_mask"):
                if name in truth:
                    d = dice(cm[name], truth[name])
                    if d is not None:
                        per_cl.setdefault(name, []).append(d)
    summary = {name: {"mean": float(np.mean(v)), "min": float(np.min(v)), "n": len(v)} for name, v in per.items()}
    summary_cl = {name: {"mean": float(np.mean(v)), "min": float(np.min(v)), "n": len(v)} for name, v in per_cl.items()}
    return {"network": summary, "classical": summary_cl, "seeds": [int(s) for s in seeds], "matrix": matrix,
            "inference_s_mean": float(np.mean(times)) if times else None}


def train_and_save(region: str, iterations: int = 600, seed: int = 0, out_dir: Path | None = None,
                   n_train: int = 32, matrices=(128, 256), n_eval: int = 8, eval_matrix: int = 256,
                   arch: dict | None = None, patch=None, max_minutes: float | None = None, log=print,
                   init_from: Path | None = None, lr: float = 3e-3) -> dict:
    """``qc train seg``: simulate ``n_train`` cases (seeds ``seed`` ..), train, save safetensors into ``out_dir``
    (default the shipped ``detectors/weights``), evaluate on ``n_eval`` held-out cases (seeds 10^6 + seed ..) and
    register it in that folder's manifest. ``init_from``: a safetensors state dict of the same architecture to
    start from (fine-tuning; its sha256 is recorded). Returns the manifest entry."""
    import torch
    from safetensors.torch import save_file

    from detectors import weights

    _check_region(region)
    if iterations < 1 or n_train < 1:
        raise QCInputError("iterations and n_train must be at least 1")
    out_dir = Path(out_dir) if out_dir is not None else weights.WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.json"
    init_state, init_desc = None, None
    if init_from is not None:  # checked before the minutes of simulation
        from safetensors.torch import load_file

        init_from = Path(init_from)
        if not init_from.is_file():
            raise QCInputError(f"no such weights file: {init_from}")
        try:
            init_state = load_file(str(init_from))
            build_network(region, arch).load_state_dict(init_state)
        except Exception as exc:  # safetensors header errors, missing/unexpected keys, shape mismatches
            raise QCInputError(f"{init_from.name} is not a {region} network of this architecture: "
                               f"{str(exc).strip().splitlines()[0][:200]}") from None
        init_desc = {"file": init_from.name, "sha256": weights.sha256_file(init_from)}
    t0 = time.perf_counter()
    train_seeds = [seed + i for i in range(n_train)]
    data = training_volumes(region, train_seeds, list(matrices))
    t_data = time.perf_counter() - t0
    log(f"{len(data)} training volumes simulated in {t_data:.0f}s")
    t1 = time.perf_counter()
    net, done = train(region, data, iterations, seed=seed, arch=arch, patch=patch, max_minutes=max_minutes, log=log,
                      init_state=init_state, lr=lr)
    t_train = time.perf_counter() - t1
    from qc.safe_names import safe_child

    path = safe_child(out_dir, model_name(region), ".safetensors")  # region is validated, but keep the guard
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(path))
    a = {**DEFAULT_ARCH, **(arch or {})}
    eval_seeds = [1_000_000 + seed + i for i in range(n_eval)]
    metrics = evaluate(region, eval_seeds, eval_matrix, net=net) if n_eval else {}
    entry = {
        "kind": "monai.networks.nets.UNet (3-D) segmentation",
        "version": f"{model_name(region)}-1",
        "region": region, "classes": list(REGION_CLASSES[region]), "target_mm": TARGET_MM[region],
        "architecture": a, "input": "HU windows: (HU+1000)/1000 in [0,4]; (HU+150)/300 in [0,1]; HU/120 in [0,1]",
        "training": {
            "data": (f"{n_train} simulated {region} scans (phantoms.simulate, image mode, matrices {list(matrices)}, "
                     "seeds {0}..{1}; random patient size/shape, shift +-30 mm, yaw +-12 deg{2}, dose, kernel "
                     "smooth/sharp, slice 1.25-5 mm{3}; 15 % metal, 10 % ring/motion/beam-hardening artifacts)").format(
                         train_seeds[0], train_seeds[-1], ", pitch +-15, roll +-8 deg" if region == "head" else "",
                         ", arms up/down" if region == "chest" else "")
                    + ("; upper-abdomen gas (phantoms.anatomy.abdominal_gas) in every scan reaching below the domes, "
                       "30 % of scans extended 40-120 mm below the lung bases, 60 % with the patient table and mattress "
                       "(phantoms.anatomy.patient_table)" if region == "chest" else ""),
            "command": (f"qc train seg --region {region} --iterations {iterations} --seed {seed} --n-train {n_train} "
                        f"--n-eval {n_eval}" + (f" --max-minutes {max_minutes:g}" if max_minutes is not None else "")
                        + (f" --init-from {init_from.name} --lr {lr:g}" if init_from is not None else "")),
            "seed": seed, "iterations": done, "iterations_requested": iterations, "patch": list(patch or PATCH[region]),
            "loss": f"monai DiceCELoss(softmax, batch) + Adam lr {lr:g} cosine", "simulate_s": round(t_data, 1),
            "initialised_from": init_desc,
            "train_s": round(t_train, 1), "torch": torch.__version__,
        },
        "metrics": {"heldout": metrics,
                    "refinement": "network at coarse grid + full-resolution HU refinement (detectors/segmentation.py)"},
    }
    full = weights.register(model_name(region), path, entry, manifest)
    _MODEL_CACHE.clear()
    return full
