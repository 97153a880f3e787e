"""Landmark and artifact detection with ultralytics YOLO (yolo11n), trained on simulated scans, CPU-sized.

Three detectors, each yolo11n built from ``yolo11n.yaml`` (random init: no pretrained ``.pt`` is ever
downloaded) and trained with ultralytics on simulated images (:func:`train_and_save`, ``qc train det``):

* ``yolo_head`` - head landmarks on a **sagittal** projection image at 1 mm/px: vertex, foramen magnum (skull
  base), orbit, lens, external auditory meatus (eam);
* ``yolo_chest`` - chest landmarks on a **coronal** projection image at 2 mm/px: lung apex, carina, diaphragm
  dome, costophrenic angle (lung base);
* ``yolo_artifacts`` - metal streaks, motion and rings on **axial slices** (256 px), head and chest.

Design
------
* **Projection image** (:func:`projection_image`): three channels with fixed physical scales, resampled to a
  fixed mm grid (rows = z from the top slice down, so a box row is a z position in mm; columns along y or x):
  water-equivalent path length (a DRR), MIP (bone), mean HU of the tissue along the ray. Head from the side,
  where vertex, skull base, orbits and ear canals are stacked along the AP axis; chest from the front, where
  both lungs, the trachea and the domes are side by side. :func:`frame_projection` crops it to the body's columns
  and adds 16 empty rows above and below the scan (boxes at the scan edge are never clipped by the image border:
  without them the vertex read 3-6 mm low whenever it was < 12 mm below the top of the scan).
* **Landmarks as boxes**: a landmark is a point; its training box is a square of fixed side (``LANDMARKS``, 16-40
  mm) centred on it, and the detected box centre's row gives z = z_row0 - (row - 0.5) mm_px. Left/right pairs
  are one box at their mean in the sagittal head view (z = mean of left and right), one box per lung in the
  coronal chest view (z = mean of the two best boxes). Confidence = the best box's score; a landmark cut off by
  the scan range has no training box, so a low confidence (< ~0.25) means "probably not in the scan".
* **Ground truth** (:func:`landmark_points`): analytic, from the anatomy of :mod:`phantoms.anatomy` and the
  pose in the phantom's truth (documented per landmark there); checked against the label volume in
  ``tests/test_yolo_detect.py`` (lens centroid, top of the body, lung top, lung floor at the lung centre, ear
  canal air). The simulator has no separate carina/EAM/lens-detection ground truth beyond its geometry: carina =
  the trachea's end (``carina_z``), EAM = the centre of the labelled ear-canal air cylinder, orbit = the orbit fat
  ellipsoid's centre, diaphragm dome = the top of the lung floor ``base + 90 (1 - r^2)`` at r = 0.
* **Artifacts** (:func:`axial_image`): window -500..700 HU (streaks of +-100 HU visible, metal and bone
  saturated); structured residuals: the ring residual (:func:`ring_residual_image`: the radial high-pass averaged
  over all angles about the centre, i.e. the polar residual that the explicit ``ring_index_hu`` averages, divided
  by its standard error and kept as an image) plus, on slices with metal, the streak coherence
  (:func:`streak_coherence_image`: per angle about the metal, the product of the two radial bands' residual profiles
  of the explicit ``streak_index_hu``); and an air window for motion ghosts. Boxes = the bounding box of the
  simulator's artifact mask of that class (metal streaks: the square within 45 mm of the metal,
  :func:`_metal_streak_box`, where the streak channel holds the evidence; the streaks' own mask spans the slice).
  Metal-free twins (the same seed's metal without streaks) are the metal class's negatives in training
  (:func:`_twin_index`). Per-scan score = max box confidence of the class over the read slices (every metal slice
  plus 24 evenly spaced ones), averaged over the two models of the artifact ensemble (:data:`ARTIFACT_MODELS`).
  Deviation: with the plain slice in a soft-tissue window instead of the ring-residual channel, rings of severity
  0.5 (~10-15 HU under 3-10 HU noise at 128 matrix) were not learned (held-out AUC 0.25).
* **Offline** (:func:`ultralytics_offline`): YOLO_OFFLINE=1, YOLO_AUTOINSTALL=False, YOLO_VERBOSE=False,
  YOLO_CONFIG_DIR in the user's cache (``~/.cache/ctqc/ultralytics`` or ``$QC_YOLO_CONFIG_DIR``), matplotlib's
  DejaVuSans.ttf copied to ``Arial.ttf`` there, ``amp=False`` (the AMP check downloads yolo11n.pt),
  ``plots=False``; the test trains with every socket refused.
* **Weights**: ultralytics checkpoints are pickles; only the state dict is kept, as fp16 safetensors
  (``detectors/weights/yolo_<model>.safetensors``, ~1.7 MB each at channel width 0.125) registered in the manifest
  with its classes and model yaml. Loading rebuilds ``DetectionModel("yolo11n.yaml", nc)`` and loads the state
  dict (sha256-verified through :mod:`detectors.weights`). Inference is our own forward pass + ultralytics NMS (multi-label: lens and
  orbit boxes overlap) in eval mode: deterministic.
* **Training** (CPU, ``workers=0``, 1 thread): no mosaic/scale/flip/hue augmentation (the mm grid and the channel
  scales carry the information), +-10 % translation, AdamW lr 0.002 cosine, batch 8 with one optimizer step per
  batch (ultralytics' default nbs=64 would accumulate 8 batches per step: too few steps for a CPU budget).
  A single model per region for landmarks and artifacts together was tried first: within the same budget
  neither task converged (lens missed on 22/30 volumes), hence three models.

Measured
--------
Shipped weights (``qc train det --region head|chest --n-train 160 --epochs 20 --batch 8``; the artifact ensemble
``--region artifacts --n-train 320 --epochs 24 --seed 0`` and ``--n-train 480 --epochs 24 --seed 1``; shared 2-core
CPU, 1 torch thread): training 214 s (head), 180 s (chest), 669 s and 1,146 s (artifacts, each sharing the machine
with another training), plus simulation (~9 min head volumes with 2 processes, 11 min chest volumes with 1, 7-12 min
artifact slices with 1). ``benchmarks/bench_detection.py --n-artifact 20`` on fresh seeds (none used in training or
for the manifest):

* landmark |z error| MAE (max) in mm, 20 held-out volumes per region (matrix 128-512, slices 1.25-5 mm, random
  pose, shift and scan range): head vertex 0.16 (0.63), foramen magnum 0.45 (0.89), orbit 0.26 (1.16), lens 0.43
  (1.12), eam 0.42 (1.51); chest lung apex 0.43 (1.82), carina 0.74 (2.92), diaphragm dome 0.56 (1.65),
  costophrenic angle 0.85 (2.32). The manifest's 30 held-out volumes per region: all MAE <= 1.31 mm.
* artifact ROC AUC of the ensemble (``yolo_artifacts-4`` + ``yolo_artifacts_b-4``, mean score), YOLO vs the explicit
  IQM on the same 2-slice scans (128 matrix, severity 0.5; 20 with the artifact vs 20 without, + 20 streak-free
  metal for metal), seeds 360,000+ head / 370,000+ chest: head metal 0.991 vs streak_index_hu 0.965, motion 1.000 vs
  1.000, ring 1.000 vs 1.000; chest metal 0.955 vs 0.894, motion 1.000 vs 0.990, ring 0.990 vs 0.900. Seeds
  460,000+ / 470,000+ (``--artifact-seeds 460000,470000``, simulated after training): head 1.000 / 1.000 / 1.000;
  chest metal 0.976 vs 0.867, motion 1.000, ring 0.993 vs 0.919. The manifest's held-out scans (10 per kind): chest
  metal 0.955, motion and ring 1.000. Single models: chest metal 0.930-0.984, ring 0.963-1.000 (manifest notes);
  ``yolo_artifacts-3`` (ring channel in HU) had chest ring 0.915 on the 370,000+ set. The metal and ring classes
  read the explicit IQMs' polar residuals.
* speed: ``benchmarks/bench_detectors.py`` (ONNX Runtime, as assessment runs them).

The landmark margins and the artifact scores are IQMs (``yolo_*`` in metrics/learned.py, filled by
qc/pipeline.py's ``detector_outputs``).
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from qc.errors import QCInputError

# ------------------------------------------------------------------------------------------ configuration
#: Projection view, grid (mm per pixel, both axes) and training canvas (pixels) per region. The head is seen
#: from the side (sagittal: vertex, skull base, orbits and ear canals stacked along the AP axis), the chest from
#: the front (coronal: both lungs, the trachea and the domes side by side).
REGION_VIEW = {
    "head": {"view": "sagittal", "mm_px": 1.0, "canvas": 256, "drr_mm": 250.0},
    "chest": {"view": "coronal", "mm_px": 2.0, "canvas": 256, "drr_mm": 400.0},
}
#: Rows of empty canvas above and below the scan, and columns of margin beside the body, in the framed projection
#: image (:func:`frame_projection`): a landmark box at the scan edge is never clipped by the image border (clipped
#: training boxes pulled the vertex 3-6 mm into the scan when it was < 12 mm below the top).
PAD_ROWS = 16
BODY_MARGIN_COLS = 8
#: Landmark classes per region with their box side (mm). A landmark is a point; its box is a square of this
#: side centred on it, so the box centre's row is the landmark's z.
LANDMARKS: dict[str, dict[str, float]] = {
    "head": {"vertex": 24.0, "foramen_magnum": 24.0, "orbit": 32.0, "lens": 16.0, "eam": 20.0},
    "chest": {"lung_apex": 40.0, "carina": 30.0, "diaphragm_dome": 40.0, "costophrenic_angle": 40.0},
}
#: Landmarks that appear twice in the view (left and right lung, seen from the front).
BILATERAL = {"lung_apex", "diaphragm_dome", "costophrenic_angle"}
#: Artifact classes (axial slices): the simulator's metal streaks, motion and ring artifacts.
ARTIFACTS = ("metal", "motion", "ring")
AXIAL_PX = 256  # axial slices are resized to this square before detection
WEIGHTS_NAME = "yolo_{model}"
MODEL_YAML = "yolo11n.yaml"
#: Channel width multiplier of the shipped detectors: yolo11n's depth (0.50) with an eighth of YOLO11's widths
#: (yolo11n has a quarter): ~4x fewer weights (0.65 M, 1.3 MB in fp16) for images of 256 px and <= 5 classes.
#: Models trained before the option existed record no width and are yolo11n's 0.25.
WIDTH = 0.125
TRAIN_SEED0 = {"head": 40_000, "chest": 50_000}      # landmark training volumes: seed0 + i
HELDOUT_SEED0 = {"head": 140_000, "chest": 150_000}  # held-out volumes (manifest, benchmark): disjoint
TEST_SEED0 = {"head": 240_000, "chest": 250_000}     # the test's volumes: used for nothing else
ART_TRAIN_SEED0 = {"head": 60_000, "chest": 70_000}
ART_HELDOUT_SEED0 = {"head": 160_000, "chest": 170_000}


#: The artifact detector is an ensemble of two independently trained models of the same recipe (different training
#: seeds and slices): the per-scan score is the mean of the members' scores. One model's chest metal-streak AUC moved
#: by +-0.05 from training run to run and between held-out sets of 10-20 scans per kind (0.930-0.984); the mean of two
#: runs was >= 0.955 on all three held-out sets (see the manifest notes and benchmarks/bench_detection.py), for one
#: more forward pass (~0.1 s for 24 slices; the slice images are computed once).
ARTIFACT_MODELS = ("artifacts", "artifacts_b")
#: the shipped detectors: one landmark model per region, the artifact ensemble for axial slices of both regions
MODELS = ("head", "chest") + ARTIFACT_MODELS


def classes(model: str) -> tuple[str, ...]:
    """Class names of a detector: the region's landmarks ('head', 'chest') or the artifacts ('artifacts',
    'artifacts_b': the two members of the artifact ensemble)."""
    if model in ARTIFACT_MODELS:
        return ARTIFACTS
    _check_region(model)
    return tuple(LANDMARKS[model])


def _check_region(region: str) -> None:
    if region not in LANDMARKS:
        raise QCInputError(f"region must be head or chest, not {region!r}")


# ------------------------------------------------------------------------------------ ultralytics, offline
def config_dir() -> Path:
    """Ultralytics' settings/font folder: ``$QC_YOLO_CONFIG_DIR`` or ``<user cache>/ctqc/ultralytics`` (never the
    repository)."""
    env = os.environ.get("QC_YOLO_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ctqc" / "ultralytics"


def ultralytics_offline():
    """Import ultralytics with everything that could reach the network switched off, and return the module.

    * ``YOLO_OFFLINE=1``: ``is_online()`` answers False, so no analytics events and no downloads are attempted;
    * ``YOLO_AUTOINSTALL=False``: a missing requirement is reported, never pip-installed;
    * ``YOLO_VERBOSE=False``; ``YOLO_CONFIG_DIR`` in the user's cache (settings.json lives there);
    * ``Arial.ttf`` (what ultralytics downloads for its plots) is matplotlib's DejaVuSans.ttf copied into the
      config folder, so a plot never triggers a download;
    * models are built from ``yolo11n.yaml`` (no ``.pt`` download) and trained with ``amp=False`` (the AMP check
      downloads ``yolo11n.pt``) and ``plots=False``.

    The variables are set before the first import; if another module imported ultralytics earlier in the process,
    its settings stand (the test checks that training opens no socket)."""
    cfg = config_dir()
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ["YOLO_VERBOSE"] = "False"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg))
    font_dir = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (font_dir / name).exists() and src.exists():
            shutil.copyfile(src, font_dir / name)
    import ultralytics
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync", False):
        SETTINGS.update({"sync": False})
    return ultralytics


# ------------------------------------------------------------------------------------------ images
def _sorted_volume(hu, z_positions):
    z = np.asarray(z_positions, dtype=float)
    if z.size > 1 and z[1] < z[0]:
        return hu[::-1], z[::-1]
    return hu, z


def projection_image(hu, spacing, z_positions, region: str, origin_xy=(0.0, 0.0), direction=None):
    """The region's projection image on a fixed mm grid and its geometry.

    Channels (uint8, fixed physical scales, no per-image normalisation):
    0. water-equivalent path length along the ray (a radiograph, DRR): sum of max(HU + 1000, 0) / 1000 x voxel
       length, 0..``drr_mm`` -> 0..255;
    1. maximum intensity projection, -200..1800 HU (bone, metal);
    2. mean HU of the tissue along the ray (voxels > -500 HU), -150..350 HU (fat/orbits darker, bone brighter).

    Rows run from the highest slice down in steps of ``mm_px`` (row r at z = z_top - r mm_px); columns along the
    projected axis (sagittal: y, anterior first; coronal: x) from the first voxel centre in steps of ``mm_px``.
    Returns (image [H, W, 3] uint8, geometry {z_top_mm, mm_px, h0_mm, axis}).
    """
    from scipy import ndimage as ndi

    _check_region(region)
    cfg = REGION_VIEW[region]
    hu = np.asarray(hu)
    hu, z = _sorted_volume(hu, z_positions)
    if hu.ndim != 3 or hu.shape[0] < 2 or min(hu.shape[1:]) < 16:
        raise QCInputError(f"need a 3-D volume of >= 2 slices for landmark detection, got shape {hu.shape}")
    dz, py, px = (float(s) for s in spacing)
    axis = 2 if cfg["view"] == "sagittal" else 1      # projected array axis
    step_along = px if axis == 2 else py
    nz = hu.shape[0]
    n_h = hu.shape[1] if axis == 2 else hu.shape[2]
    drr = np.empty((nz, n_h), np.float32)
    mip = np.empty((nz, n_h), np.float32)
    tis = np.empty((nz, n_h), np.float32)
    for k in range(nz):  # slice by slice: no full-volume float copy
        s = hu[k].astype(np.float32)
        drr[k] = np.clip(s + 1000.0, 0.0, None).sum(axis=axis - 1) * (step_along / 1000.0)
        mip[k] = s.max(axis=axis - 1)
        t = s > -500.0
        cnt = t.sum(axis=axis - 1)
        tis[k] = np.where(cnt > 0, (s * t).sum(axis=axis - 1) / np.maximum(cnt, 1), -1000.0)
    mm = cfg["mm_px"]
    step_h = py if axis == 2 else px
    sign_h = 1.0
    if direction is not None:
        sign_h = float(np.sign(np.asarray(direction)[1 if axis == 2 else 0, 1 if axis == 2 else 0]) or 1.0)
    h_first = float(origin_xy[1] if axis == 2 else origin_xy[0])
    # anti-alias before sampling on the coarser grid
    sig = (max(0.0, 0.4 * (mm / dz - 1.0)) if dz < mm else 0.0, max(0.0, 0.4 * (mm / step_h - 1.0)) if step_h < mm else 0.0)
    chans = [drr, mip, tis]
    if any(sig):
        chans = [ndi.gaussian_filter(c, sig, mode="nearest") for c in chans]
    z_top, z_bot = float(z[-1]), float(z[0])
    rows = int(math.floor((z_top - z_bot) / mm + 1e-6)) + 1
    cols = int(math.floor((n_h - 1) * step_h / mm + 1e-6)) + 1
    zr = z_top - mm * np.arange(rows)
    # fractional slice index of each row (z need not be evenly spaced)
    fz = np.interp(zr, z, np.arange(nz))
    fh = np.arange(cols) * mm / step_h
    if sign_h < 0:  # keep the image in patient orientation (anterior / right first)
        fh = fh[::-1]
    coords = np.meshgrid(fz, fh, indexing="ij")
    out = [ndi.map_coordinates(c, coords, order=1, mode="nearest") for c in chans]
    img = np.stack([
        np.clip(out[0] / cfg["drr_mm"], 0, 1),
        np.clip((out[1] + 200.0) / 2000.0, 0, 1),
        np.clip((out[2] + 150.0) / 500.0, 0, 1),
    ], axis=-1)
    h0 = h_first if sign_h > 0 else h_first + sign_h * step_h * (n_h - 1)
    geom = {"z_top_mm": z_top, "mm_px": mm, "h0_mm": h0, "axis": "y" if axis == 2 else "x", "shape": list(img.shape[:2]),
            "scan_top_mm": z_top, "scan_bottom_mm": float(zr[-1])}
    return np.rint(img * 255).astype(np.uint8), geom


def frame_projection(img: np.ndarray, geom: dict, region: str) -> tuple[np.ndarray, dict]:
    """The detector's input: the projection image cropped to the body's columns (DRR > ~2 mm water) with
    ``BODY_MARGIN_COLS`` either side (zero columns added where the body reaches the image edge), at most the
    training canvas wide (a wider sagittal head is trimmed at the back of the head, a wider coronal chest at both
    sides), with ``PAD_ROWS`` empty rows above and below the scan; zero-padded to at least the canvas and to
    multiples of 32. Returns (canvas uint8 [H, W, 3], geometry: z_top_mm = z of row 0, h0_mm = position of
    column 0, scan_top_mm / scan_bottom_mm = the scan's first and last rows)."""
    cfg = REGION_VIEW[region]
    mm = geom["mm_px"]
    h, w = img.shape[:2]
    cols = np.nonzero((img[..., 0] > 2).any(axis=0))[0]
    c0, c1 = (int(cols[0]) - BODY_MARGIN_COLS, int(cols[-1]) + BODY_MARGIN_COLS) if cols.size else (0, w - 1)
    width = c1 - c0 + 1
    if width > cfg["canvas"]:
        if cfg["view"] == "sagittal":
            c1 = c0 + cfg["canvas"] - 1
        else:
            cut = width - cfg["canvas"]
            c0, c1 = c0 + cut // 2, c1 - (cut - cut // 2)
    rows = h + 2 * PAD_ROWS
    H = max(cfg["canvas"], -(-rows // 32) * 32)
    W = max(cfg["canvas"], -(-(c1 - c0 + 1) // 32) * 32)
    out = np.zeros((H, W, 3), np.uint8)
    s0, s1 = max(c0, 0), min(c1, w - 1)
    out[PAD_ROWS : PAD_ROWS + h, s0 - c0 : s1 - c0 + 1] = img[:, s0 : s1 + 1]
    g = dict(geom, z_top_mm=geom["z_top_mm"] + PAD_ROWS * mm, h0_mm=geom["h0_mm"] + c0 * mm, shape=[H, W],
             content_cols=int(c1 - c0 + 1))
    return out, g


#: HU-equivalent of one standard error in the ring channel (:func:`ring_residual_image`): z = 5 fills the channel.
RING_Z_HU = 4.0


def ring_residual_image(hu_slice, n_angles: int = 360) -> np.ndarray:
    """Rotationally averaged radial high-pass of a slice about the image centre (the isocentre of a centred
    reconstruction), as a signal-to-noise image mapped back to the slice. At each radius r, the mean over the
    angles of I - median_7(I) along the radius, counting only flat pixels (range of the radial median over 7 samples
    < 100 HU, |residual| < 150 HU, not air), divided by its standard error sd(r) / sqrt(n_eff(r)) (sd = RMS of those
    residuals, n_eff = the flat angles, scaled by 2 pi r / n_angles below r = n_angles / 2 pi: neighbouring angles
    of a small circle sample the same pixels), times :data:`RING_Z_HU`. A ring artifact (a miscalibrated detector
    channel) is a circle about the isocentre: it survives the angular mean as a sharp circle, while noise and anatomy
    edges average out.
    The same polar residual as the explicit ``ring_index_hu`` (Sijbers & Postnov 2004), kept as an image so that the
    detector sees where the rings are.

    Why the standard error: the plain angular mean (an HU image) let the detector mistake noise for rings at small
    radii and in noisy scans (a circle of radius 3 px averages ~19 pixels); on 20 + 20 simulated chest slices with and
    without rings the crude statistic max_r |profile| separated them with AUC 0.75 as a mean in HU, 0.815 as an angular
    median, and 0.96 as this z-score."""
    from scipy import ndimage as ndi

    s = np.asarray(hu_slice, dtype=np.float32)
    ny, nx = s.shape
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    rmax = int(min(cy, cx))
    r = np.arange(rmax + 1, dtype=np.float32)
    th = np.linspace(0.0, 2 * np.pi, n_angles, endpoint=False)
    polar = ndi.map_coordinates(s, [cy + np.outer(np.sin(th), r), cx + np.outer(np.cos(th), r)], order=1)
    bg = ndi.median_filter(polar, size=(1, 7))
    res = polar - bg
    spread = ndi.maximum_filter(bg, size=(1, 7)) - ndi.minimum_filter(bg, size=(1, 7))
    ok = (spread < 100.0) & (np.abs(res) < 150.0) & (bg > -950.0)
    cnt = ok.sum(axis=0)
    res = res * ok
    mean = res.sum(axis=0) / np.maximum(cnt, 1)
    sd = np.sqrt((res * res).sum(axis=0) / np.maximum(cnt, 1))
    n_eff = np.maximum(cnt * np.minimum(1.0, 2 * np.pi * np.maximum(r, 0.5) / n_angles), 1.0)
    z = mean / np.maximum(sd / np.sqrt(n_eff), 1e-3)
    prof = np.where(cnt >= 0.1 * n_angles, z * RING_Z_HU, 0.0)
    yy, xx = np.mgrid[:ny, :nx]
    rr = np.hypot(yy - cy, xx - cx)
    return np.interp(rr, r, prof, right=0.0).astype(np.float32)


def streak_coherence_image(hu_slice, pixel_mm: float) -> np.ndarray:
    """Where metal streaks are, as an image (HU): for a slice with metal, the pixels 5-45 mm beyond the largest
    metal object hold sqrt(max(p(a), 0)) at their angle a about the metal, p(a) = (a_in(a) - mean a_in)
    (a_out(a) - mean a_out), the product of the residual's angular profiles in the two radial bands of the
    explicit ``streak_index_hu`` (:func:`metrics.artifacts.metal_ray_profiles`; the body = holes-filled > -500 HU
    region, lungs included). A streak is a line through the metal, so it is in both bands with the same sign: its
    rays are bright; noise is independent between the bands (the mean of p over the angles is the squared streak
    index). Negative products are dropped: they are never a streak, but anatomy edges running along a ray give
    large ones (a streak-free chest clip with a -52 HU covariance scored 0.95 with the signed product). 0
    everywhere without metal.

    Why: at 128 matrix a chest clip of 7 mm is 2 pixels and its streaks at severity 0.5 are 2-20 HU under a
    noise of 10-40 HU per pixel; on the windowed slice alone the detector reached a held-out AUC of 0.68-0.77
    against streak-free metal, while the covariance of the two profiles separates them."""
    from scipy import ndimage as ndi

    from metrics.artifacts import METAL_HU, STREAK_BANDS_MM, metal_ray_profiles

    s = np.asarray(hu_slice, dtype=np.float32)
    out = np.zeros(s.shape, dtype=np.float32)
    if not (s > METAL_HU).any():
        return out
    body = ndi.binary_fill_holes(s > -500.0)
    rays = metal_ray_profiles(s, pixel_mm, body)
    if rays is None:
        return out
    a, b = (np.nan_to_num(v - np.nanmean(v), nan=0.0) if np.isfinite(v).any() else np.zeros_like(v)
            for v in rays["profiles"])
    coh = np.sqrt(np.maximum(a * b, 0.0)).astype(np.float32)
    px = float(pixel_mm)
    lo = rays["r_metal_mm"] + STREAK_BANDS_MM[0][0]
    hi = rays["r_metal_mm"] + STREAK_BANDS_MM[-1][1]
    half = int(np.ceil(hi / px)) + 1
    cy, cx = rays["cy"], rays["cx"]
    y0, x0 = max(int(cy) - half, 0), max(int(cx) - half, 0)
    y1, x1 = min(int(cy) + half + 1, s.shape[0]), min(int(cx) + half + 1, s.shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    r = np.hypot(yy - cy, xx - cx) * px
    n = coh.size
    ang = np.rint(np.mod(np.arctan2(yy - cy, xx - cx), 2 * np.pi) / (2 * np.pi) * n).astype(int) % n
    out[y0:y1, x0:x1] = np.where((r >= lo) & (r <= hi), coh[ang], 0.0)
    return out


def axial_image(hu_slice, pixel_mm: float) -> np.ndarray:
    """One axial slice as a 256 x 256 x 3 uint8 image: window -500..700 HU (metal streaks of +-100 HU, body outline,
    bone and metal saturated); structured residuals -20..20 HU: the ring residual (:func:`ring_residual_image`, a
    z-score x 4 HU, circles about the centre) plus the streak coherence (:func:`streak_coherence_image`, rays from
    metal); and an air window -1024..-824 HU (motion ghosts and streaks in the air around the patient). Resized
    with area averaging (larger matrices) or bilinear (smaller). ``pixel_mm``: the in-plane pixel size.

    A slice larger than 256 px is area-averaged to 256 px before the ring residual is computed (the detector was
    trained on 128 and 256 matrices, and a 512 slice costs a quarter); the streak coherence is computed at the
    native matrix (a small metal object could fall below the metal threshold once averaged) and area-averaged."""
    import cv2

    s = np.asarray(hu_slice, dtype=np.float32)
    streak = streak_coherence_image(s, pixel_mm)
    if max(s.shape) > AXIAL_PX:
        s = cv2.resize(s, (AXIAL_PX, AXIAL_PX), interpolation=cv2.INTER_AREA)
        streak = cv2.resize(streak, (AXIAL_PX, AXIAL_PX), interpolation=cv2.INTER_AREA)
    residual = ring_residual_image(s) + streak
    img = np.stack([np.clip((s + 500.0) / 1200.0, 0, 1), np.clip((residual + 20.0) / 40.0, 0, 1),
                    np.clip((s + 1024.0) / 200.0, 0, 1)], axis=-1)
    if img.shape[0] != AXIAL_PX or img.shape[1] != AXIAL_PX:
        img = cv2.resize(img, (AXIAL_PX, AXIAL_PX), interpolation=cv2.INTER_LINEAR)
    return np.rint(img * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ ground truth
def landmark_points(truth: dict, region: str) -> dict[str, list[tuple[float, float, float]]]:
    """Scanner-frame (x, y, z) mm of every landmark instance of a simulated scan, from the analytic anatomy of
    :mod:`phantoms.anatomy` and the pose in ``truth`` (``p = centre + R q``, ``R`` = rotation_matrix(yaw, pitch,
    roll), centre = (shift_x, shift_y, 0)). Anatomy-frame points ``q``:

    head (``HeadShape`` rebuilt from ``head_scale`` and ``skull_thickness_mm``; a = skin semi-axes, i = inner
    table semi-axes, zb = skull_base_z):
      vertex: the top of the skin ellipsoid, R diag(a^2) R^T e_z / sqrt(e_z^T R diag(a^2) R^T e_z) (its z is
      ``truth['vertex_z_mm']``); foramen_magnum: (0, 0.3 i_y, zb) (= ``truth['skull_base_z_mm']``);
      orbit: each orbit's centre (lens centre + (0, 15, 0)), both sides; lens: both lens centres (z =
      ``truth['lens_z_mm']``); eam: the centre of each ear canal (+-(outer_x - 4), 0.05 a_y, zb + 6), the labelled
      air cylinder from zb + 2 to zb + 10 (``truth['eam_z_mm']`` uses the skin surface on one side instead).
    chest (yaw only; L = apex - base, lungs centred at x = +-0.46 half-width, 0.05 half-depth):
      lung_apex: (+-0.46 w, 0.05 d, 0.3 L) (= ``truth['lung_apex_z_mm']``); carina: (0, -0.15 d, 0)
      (= ``truth['carina_z_mm']``); diaphragm_dome: the top of each dome, (+-0.46 w, 0.05 d, -0.7 L + 90) (the
      lung floor is base + 90 (1 - r^2) in ``chest_labels``); costophrenic_angle: the lateral lung edge at the
      lowest lung point, (+-0.82 w, 0.05 d, -0.7 L) (= ``truth['lung_base_z_mm']``).
    """
    from phantoms import anatomy

    R = anatomy.rotation_matrix(truth.get("yaw_deg", 0.0), truth.get("pitch_deg", 0.0), truth.get("roll_deg", 0.0))
    c = np.array([truth.get("shift_x_mm", 0.0), truth.get("shift_y_mm", 0.0), 0.0])

    def p(q):
        return tuple(float(v) for v in c + R @ np.asarray(q, float))

    if region == "head":
        s = anatomy.HeadShape(scale=truth["head_scale"], skull_mm=truth["skull_thickness_mm"], ventricle=1.0)
        a, inner, zb = s.skin_axes, s.inner_axes, s.skull_base_z
        outer = a - 5.0
        m = R @ np.diag(a**2) @ R.T
        top = m[:, 2] / math.sqrt(m[2, 2])
        lens = s.lens_centres
        return {
            "vertex": [tuple(float(v) for v in c + top)],
            "foramen_magnum": [p((0.0, 0.3 * inner[1], zb))],
            "orbit": [p(lc + np.array([0.0, 15.0, 0.0])) for lc in lens],
            "lens": [p(lc) for lc in lens],
            "eam": [p((sx * (outer[0] - 4.0), 0.05 * a[1], zb + 6.0)) for sx in (-1, 1)],
        }
    w, d = truth["half_width_mm"], truth["half_depth_mm"]
    apex, base = truth["lung_apex_z_mm"], truth["lung_base_z_mm"]
    return {
        "lung_apex": [p((sx * 0.46 * w, 0.05 * d, apex)) for sx in (-1, 1)],
        "carina": [p((0.0, -0.15 * d, truth.get("carina_z_mm", 0.0)))],
        "diaphragm_dome": [p((sx * 0.46 * w, 0.05 * d, base + 90.0)) for sx in (-1, 1)],
        "costophrenic_angle": [p((sx * 0.82 * w, 0.05 * d, base)) for sx in (-1, 1)],
    }


def landmark_truth_z(truth: dict, region: str) -> dict[str, float]:
    """True z (mm) of each landmark: the mean over its instances (left/right)."""
    return {k: float(np.mean([q[2] for q in v])) for k, v in landmark_points(truth, region).items()}


def _landmark_boxes(truth: dict, region: str, geom: dict) -> list[tuple[int, float, float, float, float]]:
    """(class, x centre, y centre, w, h) in pixels of the framed projection image, for landmarks inside the scan
    range (within half a row of its first/last row) and inside the image's content columns. A head landmark seen
    from the side is one box at the mean of its left/right instances; a chest landmark seen from the front is one
    box per lung."""
    mm = geom["mm_px"]
    h_idx = 1 if geom["axis"] == "y" else 0
    out = []
    for ci, (name, pts) in enumerate(landmark_points(truth, region).items()):
        side = LANDMARKS[region][name] / mm
        inst = pts if name in BILATERAL else [tuple(np.mean(pts, axis=0))]
        for q in inst:
            if not (geom["scan_bottom_mm"] - 0.5 * mm <= q[2] <= geom["scan_top_mm"] + 0.5 * mm):
                continue  # cut by the scan range: no box (the detector learns that it is absent)
            yc = (geom["z_top_mm"] - q[2]) / mm + 0.5
            xc = (q[h_idx] - geom["h0_mm"]) / mm + 0.5
            if not 0.0 <= xc <= geom.get("content_cols", geom["shape"][1]):
                continue  # outside the reconstructed field or trimmed away
            out.append((ci, xc, yc, side, side))
    return out


def _artifact_box(mask2d: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x centre, y centre, w, h) in pixels of the 256 image for the bounding box of a slice's artifact mask."""
    if not mask2d.any():
        return None
    n_y, n_x = mask2d.shape
    ys = np.nonzero(mask2d.any(axis=1))[0]
    xs = np.nonzero(mask2d.any(axis=0))[0]
    fy, fx = AXIAL_PX / n_y, AXIAL_PX / n_x
    x0, x1 = xs[0] * fx, (xs[-1] + 1) * fx
    y0, y1 = ys[0] * fy, (ys[-1] + 1) * fy
    return ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)


def _metal_streak_box(hu2d: np.ndarray, pixel_mm: float) -> tuple[float, float, float, float] | None:
    """(x centre, y centre, w, h) in pixels of the 256 image: the square of half side r_metal + 45 mm about the
    largest metal object (> METAL_HU) of the slice, clipped to the image; None without metal. The training box of
    the metal-streak class: the streaks themselves run across the whole slice (their mask's box is the image), but
    the evidence (the streak channel of :func:`streak_coherence_image`) lies within 45 mm of the metal, and a box
    there puts the anchors that must fire where the evidence is (with whole-image boxes, chest metal reached a
    held-out AUC of only 0.76-0.90)."""
    from metrics.artifacts import METAL_HU, STREAK_BANDS_MM, largest_metal_object

    metal = np.asarray(hu2d) > METAL_HU
    if not metal.any():
        return None
    cy, cx, r_metal_px = largest_metal_object(metal)
    half = r_metal_px + STREAK_BANDS_MM[-1][1] / pixel_mm
    n_y, n_x = metal.shape
    y0, y1 = max(cy + 0.5 - half, 0.0), min(cy + 0.5 + half, float(n_y))
    x0, x1 = max(cx + 0.5 - half, 0.0), min(cx + 0.5 + half, float(n_x))
    fy, fx = AXIAL_PX / n_y, AXIAL_PX / n_x
    return ((x0 + x1) / 2 * fx, (y0 + y1) / 2 * fy, (x1 - x0) * fx, (y1 - y0) * fy)


# ------------------------------------------------------------------------------------------ simulated cases
def landmark_case_params(region: str, seed: int, heldout: bool = False) -> dict:
    """Random acquisition and pose of a landmark case: matrix 128/192/256, slice 1.25/2.5/5 mm (held out:
    also 3 mm and 512 matrix), kernel, dose, table shift +-30 mm (x, y), head yaw +-12, pitch +-15, roll +-8 deg,
    chest yaw +-8 deg, arms up/down, and a random scan range (the landmarks sit at different rows): head from
    10-60 mm below to 2-40 mm above, chest from 10-80 mm below to 5-60 mm above
    (below the lowest / above the highest landmark instance); 12 % of training cases cut the top
    or the bottom landmark off."""
    rng = np.random.default_rng([seed, 17])
    mats = (128, 192, 256, 512) if heldout else (128, 192, 256)
    probs = (0.3, 0.3, 0.3, 0.1) if heldout else (0.3, 0.35, 0.35)
    kw = {"matrix": int(rng.choice(mats, p=probs)),
          "slice_mm": float(rng.choice((1.25, 2.5, 3.0, 5.0) if heldout else (1.25, 2.5, 5.0))),
          "kernel": str(rng.choice(["smooth", "sharp"])),
          "shift_x": float(rng.uniform(-30, 30)), "shift_y": float(rng.uniform(-30, 30))}
    if region == "head":
        kw.update(mas=float(np.exp(rng.uniform(np.log(100), np.log(400)))), yaw=float(rng.uniform(-12, 12)),
                  pitch=float(rng.uniform(-15, 15)), roll=float(rng.uniform(-8, 8)))
    else:
        kw.update(mas=float(np.exp(rng.uniform(np.log(20), np.log(200)))), yaw=float(rng.uniform(-8, 8)),
                  arms_up=bool(rng.random() < 0.6))
    kw["_below"] = float(rng.uniform(10, 60) if region == "head" else rng.uniform(10, 80))
    kw["_above"] = float(rng.uniform(2, 40) if region == "head" else rng.uniform(5, 60))
    kw["_cut"] = "none" if heldout or rng.random() >= 0.12 else str(rng.choice(["top", "bottom"]))
    return kw


def simulate_landmark_case(region: str, seed: int, heldout: bool = False, matrix: int | None = None):
    """(Phantom, params) of one landmark case: the pose is simulated first on a tiny grid to place the scan range
    relative to the true landmarks, then the scan itself."""
    from phantoms import simulate
    from phantoms.simulate import probe_truth

    kw = landmark_case_params(region, seed, heldout)
    below, above, cut = kw.pop("_below"), kw.pop("_above"), kw.pop("_cut")
    if matrix is not None:
        kw["matrix"] = int(matrix)
    probe = probe_truth(region, seed, **{k: v for k, v in kw.items() if k not in ("matrix", "slice_mm", "kernel",
                                                                                  "mas")})
    zs = [q[2] for pts in landmark_points(probe, region).values() for q in pts]
    top, bottom = max(zs), min(zs)  # the highest / lowest landmark instance (head: pitch can put the lenses
    # below the foramen magnum)
    cfg = REGION_VIEW[region]
    max_len = (cfg["canvas"] - 2 * PAD_ROWS) * cfg["mm_px"] - 2 * kw["slice_mm"]
    z1, z0 = top + above, bottom - below
    if cut == "top":
        z1 = top - float(np.random.default_rng([seed, 5]).uniform(5, 30))
    elif cut == "bottom":
        z0 = bottom + float(np.random.default_rng([seed, 5]).uniform(5, 30))
    if z1 - z0 > max_len:  # keep the training image inside the canvas: trim the margin that is larger
        excess = z1 - z0 - max_len
        if above > below:
            z1 -= excess
        else:
            z0 += excess
    ph = simulate(region, seed=seed, z_start=z0, z_end=z1, **kw)
    return ph, {**kw, "z_start": z0, "z_end": z1, "cut": cut}


def _phantom_projection(ph, region):
    sc = ph.scan
    return projection_image(sc.hu, sc.spacing, sc.z_positions_mm(), region, origin_xy=sc.origin[:2],
                            direction=sc.direction)


def artifact_case_params(region: str, seed: int, kind: str, heldout: bool = False) -> dict:
    """A single-slice artifact case. kind: 'metal' | 'motion' | 'ring' (present, severity U(0.25, 1); held out:
    0.5 as in tests/test_artifacts.py), 'none' (no artifact) or 'metal_clean' (the metal object without its
    streaks, i.e. a perfect metal-artifact reduction: the negative that makes 'metal' mean streaks, not metal).
    Random matrix 128/256 (held out: 128 as tests/test_artifacts.py), mAs (head 25-400, chest 10-200,
    log-uniform), kernel, shift +-20 mm, yaw +-8 deg; the slice is at the metal (head: 10 mm below the skull
    base, chest: 40 mm below the carina) for metal cases and half of the others, elsewhere in the brain / chest
    otherwise."""
    rng = np.random.default_rng([seed, 31])
    lo, hi = (25.0, 400.0) if region == "head" else (10.0, 200.0)
    kw = dict(mas=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), kernel=str(rng.choice(["smooth", "sharp"])),
              shift_x=float(rng.uniform(-20, 20)), shift_y=float(rng.uniform(-20, 20)), yaw=float(rng.uniform(-8, 8)),
              matrix=128 if heldout else int(rng.choice([128, 256])))
    sev = 0.5 if heldout else float(np.round(rng.uniform(0.25, 1.0), 2))
    at_metal = kind in ("metal", "metal_clean") or rng.random() < 0.5
    if at_metal:
        kw["_z"] = "metal"
    else:
        kw["_z"] = float(rng.uniform(-10, 50) if region == "head" else rng.uniform(-120, 60))
    kw["_sev"] = sev
    return kw


def simulate_artifact_slices(region: str, seed: int, kind: str, n_slices: int = 1, heldout: bool = False,
                             matrix: int | None = None):
    """(HU slices [n, y, x], artifact mask [n, y, x] bool for the case's artifact class or None, Scan)."""
    from phantoms import simulate
    from phantoms.simulate import probe_truth
    from qc.io import Scan

    kw = artifact_case_params(region, seed, kind, heldout)
    if matrix is not None:
        kw["matrix"] = int(matrix)
    zsel, sev = kw.pop("_z"), kw.pop("_sev")
    slice_mm = 2.5
    if zsel == "metal":
        if region == "head":
            zb = probe_truth("head", seed, **{k: kw[k] for k in ("shift_x", "shift_y", "yaw")})["skull_base_z_mm"]
            zc = zb - 10.0
        else:
            zc = -40.0
    else:
        zc = zsel
    z0 = zc - slice_mm * (n_slices - 1) / 2.0 - 0.5 * (n_slices == 1)
    rng_z = dict(z_start=z0, z_end=z0 + slice_mm * (n_slices - 1) + 0.5, slice_mm=slice_mm)
    art = {"metal_clean": {"metal": sev}}.get(kind, {kind: sev} if kind in ARTIFACTS else None)
    ph = simulate(region, seed=seed, artifacts=art, **rng_z, **kw)
    if kind == "metal_clean":
        # the metal voxels (dilated 1 px) of the streaked scan copied into the artifact-free twin of the same seed
        from scipy import ndimage as ndi

        twin = simulate(region, seed=seed, artifacts=None, **rng_z, **kw).scan
        metal = ndi.binary_dilation(ph.labels == 17, structure=np.ones((1, 3, 3), bool))
        hu = twin.hu.copy()
        hu[metal] = ph.scan.hu[metal]
        scan = Scan(hu=hu, spacing=twin.spacing, origin=twin.origin, metadata=twin.metadata, fov=twin.fov)
        return hu, None, scan
    mask = None
    if kind in ARTIFACTS and ph.artifact_mask is not None:
        from phantoms.simulate import ARTIFACT_BITS

        mask = (ph.artifact_mask & ARTIFACT_BITS[kind]) > 0
    return ph.scan.hu, mask, ph.scan


# ------------------------------------------------------------------------------------------ datasets
def _write_image(path: Path, img: np.ndarray) -> None:
    """PNG with the channels in RGB order (cv2 writes BGR; ultralytics reads BGR and flips to RGB, so the network
    sees ``img``'s channel order, as :func:`_forward` feeds it)."""
    import cv2

    cv2.imwrite(str(path), np.ascontiguousarray(img[..., ::-1]))


def _write_label(path: Path, boxes, shape) -> None:
    h, w = shape[:2]
    lines = [f"{c} {min(max(xc / w, 0), 1):.6f} {min(max(yc / h, 0), 1):.6f} {min(bw / w, 1):.6f} {min(bh / h, 1):.6f}"
             for c, xc, yc, bw, bh in boxes]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def landmark_item(region: str, seed: int, heldout: bool = False, matrix: int | None = None) -> dict:
    """One simulated landmark case: canvas image, boxes, true z per landmark, geometry and parameters."""
    ph, kw = simulate_landmark_case(region, seed, heldout, matrix=matrix)
    img, geom = frame_projection(*_phantom_projection(ph, region), region)
    boxes = _landmark_boxes(ph.truth, region, geom)
    # present = in the scan range and inside the reconstructed field (a face cut by a shifted field of view has no
    # visible lens): the landmarks that have a box
    present = {k: any(b[0] == ci for b in boxes) for ci, k in enumerate(LANDMARKS[region])}
    return {"image": img, "boxes": boxes, "geom": geom, "seed": seed,
            "truth_z": landmark_truth_z(ph.truth, region), "present": present,
            "params": {k: v for k, v in kw.items()}}


ART_KINDS = ("metal", "motion", "ring", "none", "metal_clean")
#: kinds of the training slices, cycled: metal streaks vs streak-free metal is the hardest distinction (a first
#: run with the kinds in equal shares scored metal presence, not streaks: held-out AUC 0.62); motion at 1/8 of
#: the slices was under-learned (AUC 0.62-0.73), rings (on the ring-residual channel) are learned from few
TRAIN_KINDS = ("metal", "metal_clean", "motion", "ring", "none", "metal", "metal_clean", "motion")


def _twin_index(i: int) -> int:
    """Seed offset of training slice ``i``: a 'metal_clean' slice is the twin of the 'metal' slice before it (same
    seed: same patient, pose, dose and noise draws, the metal without its streaks), so that the only difference the
    detector can learn between them is the streaks. Independent draws (the first shipped runs) left chest metal at
    a held-out AUC of 0.68-0.90 between runs."""
    return i - 1 if TRAIN_KINDS[i % len(TRAIN_KINDS)] == "metal_clean" else i


def artifact_items(region: str, seed: int, kind: str, n_slices: int = 1, heldout: bool = False,
                   matrix: int | None = None) -> list[dict]:
    """The slices of one artifact case as detection items (image, boxes for the case's class)."""
    hu, mask, scan = simulate_artifact_slices(region, seed, kind, n_slices=n_slices, heldout=heldout, matrix=matrix)
    ci = {a: i for i, a in enumerate(ARTIFACTS)}
    out = []
    for k in range(hu.shape[0]):
        boxes = []
        if mask is not None:
            b = _artifact_box(mask[k]) if kind != "metal" else (_metal_streak_box(hu[k], scan.spacing[2])
                                                                 or _artifact_box(mask[k]))
            if b is not None:
                boxes.append((ci[kind], *b))
        out.append({"image": axial_image(hu[k], scan.spacing[2]), "boxes": boxes, "kind": kind, "seed": seed})
    return out


def _job(args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    fn, a = args
    return fn(*a)


def _map(fn, arglist, workers: int):
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            return list(ex.map(_job, [(fn, a) for a in arglist]))
    return [fn(*a) for a in arglist]


def training_items(region: str, n_landmark: int, n_artifact: int, seed: int = 0, workers: int = 1, log=None,
                   matrix: int | None = None):
    """Simulated training items: ``n_landmark`` projection images and ``n_artifact`` axial slices (kinds cycle
    :data:`TRAIN_KINDS`). ``matrix`` overrides the random matrix (tests)."""
    t0 = time.perf_counter()
    s0 = TRAIN_SEED0[region] + 1000 * seed
    lm = _map(landmark_item, [(region, s0 + i, False, matrix) for i in range(n_landmark)], workers)
    a0 = ART_TRAIN_SEED0[region] + 1000 * seed
    arts = _map(artifact_items, [(region, a0 + _twin_index(i), TRAIN_KINDS[i % len(TRAIN_KINDS)], 1, False, matrix)
                                 for i in range(n_artifact)], workers)
    items = lm + [it for case in arts for it in case]
    if log:
        log(f"simulated {n_landmark} {region} landmark volumes and {n_artifact} artifact slices in "
            f"{time.perf_counter() - t0:.0f}s")
    return items


def write_dataset(items: list[dict], val_items: list[dict], model: str, folder: Path) -> Path:
    """YOLO-format dataset (images/, labels/, data.yaml) in ``folder``; returns the yaml path."""
    import json

    folder = Path(folder)
    for split, its in (("train", items), ("val", val_items)):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i, it in enumerate(its):
            _write_image(folder / "images" / split / f"{i:05d}.png", it["image"])
            _write_label(folder / "labels" / split / f"{i:05d}.txt", it["boxes"], it["image"].shape)
    names = {i: n for i, n in enumerate(classes(model))}
    y = folder / "data.yaml"
    # JSON is valid YAML: no yaml dependency needed here
    y.write_text(json.dumps({"path": str(folder), "train": "images/train", "val": "images/val", "names": names}))
    return y


# ------------------------------------------------------------------------------------------ training
#: ultralytics hyper-parameters for these images: no mosaic, no scaling, no flips and no hue/saturation changes
#: (the mm grid and the channels' physical scales are the information), mild brightness and +-10 % translation;
#: one optimizer step per batch (nbs = batch: the default nbs 64 would take 4 batches per step, too few steps
#: for a CPU budget); AdamW with a cosine schedule.
HYPER = dict(mosaic=0.0, close_mosaic=0, scale=0.0, fliplr=0.0, flipud=0.0, degrees=0.0, shear=0.0, perspective=0.0,
             hsv_h=0.0, hsv_s=0.0, hsv_v=0.1, translate=0.1, mixup=0.0, cutmix=0.0, copy_paste=0.0, erasing=0.0,
             optimizer="AdamW", lr0=0.002, lrf=0.05, cos_lr=True, warmup_epochs=1.0, weight_decay=0.0005)


def model_cfg(width: float = WIDTH) -> dict:
    """yolo11n's architecture dict (``yolo11n.yaml``, shipped with ultralytics) with the channel width ``width``."""
    ultralytics_offline()
    from ultralytics.nn.tasks import yaml_model_load

    cfg = dict(yaml_model_load(MODEL_YAML))
    depth, _, max_ch = cfg["scales"]["n"]
    cfg["scales"] = {"n": [depth, float(width), max_ch]}
    cfg["scale"] = "n"
    return cfg


def train_yolo(data_yaml: Path, *, epochs: int, batch: int = 16, imgsz: int = 256, seed: int = 0,
               max_minutes: float | None = None, work_dir: Path, log=None, width: float = WIDTH):
    """Train yolo11n's architecture at channel width ``width`` (random init, no download) with ultralytics;
    returns (DetectionModel in eval mode, info)."""
    ultralytics_offline()
    import torch
    import yaml
    from ultralytics import YOLO

    torch.manual_seed(seed)
    # the trainer rebuilds the network from the model's yaml file: give it one with our width ('yolo11n' in the
    # name makes ultralytics pick the 'n' scale, which model_cfg set to this width)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    from qc.safe_names import safe_child

    cfg_file = safe_child(Path(work_dir), f"yolo11n-w{str(width).replace('.', '')}", ".yaml")
    cfg_file.write_text(yaml.safe_dump(model_cfg(width), sort_keys=False))
    model = YOLO(str(cfg_file), task="detect")
    args = dict(data=str(data_yaml), epochs=int(epochs), batch=int(batch), imgsz=int(imgsz), workers=0, device="cpu",
                amp=False, plots=False, val=False, project=str(work_dir), name="run", exist_ok=True, seed=int(seed),
                deterministic=True, pretrained=False, verbose=False, nbs=int(batch), patience=0, **HYPER)
    if max_minutes:
        args["time"] = float(max_minutes) / 60.0
    t0 = time.perf_counter()
    model.train(**args)
    train_s = time.perf_counter() - t0
    net = model.model
    net = net.float().eval()
    tr = model.trainer
    loss = getattr(tr, "tloss", None)
    if isinstance(loss, dict):
        loss = {str(k): round(float(v), 4) for k, v in loss.items()}
    elif loss is not None:
        loss = dict(zip(getattr(tr, "loss_names", ("box", "cls", "dfl")), (round(float(v), 4) for v in loss.tolist())))
    info = {"epochs": int(getattr(tr, "epoch", epochs - 1)) + 1, "train_s": round(train_s, 1), "final_loss": loss}
    if log:
        log(f"trained {info['epochs']} epochs in {train_s:.0f}s (box/cls/dfl loss {info['final_loss']})")
    return net, info


def build_model(nc: int, width: float = WIDTH):
    """yolo11n's architecture at channel width ``width`` with ``nc`` classes, random init, eval mode."""
    ultralytics_offline()
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(model_cfg(width), nc=int(nc), verbose=False).eval()


def state_for_saving(net, fp16: bool = True) -> dict:
    import torch

    out = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu().contiguous()
        if fp16 and v.is_floating_point():
            v = v.to(torch.float16)
        out[k] = v.clone()
    return out


def model_from_state(state: dict, nc: int, width: float = WIDTH):
    import torch

    net = build_model(nc, width)
    ref = net.state_dict()
    net.load_state_dict({k: v.to(ref[k].dtype) if torch.is_tensor(v) else v for k, v in state.items()}, strict=True)
    return net.float().eval()


# ------------------------------------------------------------------------------------------ inference
def _forward(net, images: list[np.ndarray], conf: float = 0.001, iou: float = 0.5, max_det: int = 50):
    """Detections per image: arrays [n, 6] (x1, y1, x2, y2, confidence, class) in image pixels. Images of one call
    must share their shape (multiples of 32). Deterministic (eval mode, no augmentation). ``net`` is the ONNX export
    (raw head outputs decoded by :func:`decode_raw`, then :func:`nms`: no torch) or the torch DetectionModel
    (ultralytics' own decoding and NMS)."""
    from detectors.runtime import OnnxNet

    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    if isinstance(net, OnnxNet):
        boxes, scores = net(x)
        pred = decode_raw(boxes, scores, x.shape[2], x.shape[3], tuple(net.meta["strides"]), int(net.meta["reg_max"]))
        return [nms(p, conf=conf, iou=iou, max_det=max_det) for p in pred]
    import torch

    ultralytics_offline()
    from ultralytics.utils.nms import non_max_suppression

    with torch.inference_mode():
        pred = net(torch.from_numpy(x))
        pred = pred[0] if isinstance(pred, (list, tuple)) else pred
        det = non_max_suppression(pred, conf_thres=conf, iou_thres=iou, max_det=max_det, multi_label=True)
    return [d.numpy() for d in det]


def export_module(net):
    """The DetectionModel as ONNX exports it: images [B, 3, H, W] -> the detection head's raw outputs (box
    distributions [B, 4 x reg_max, A], class logits [B, nc, A]). Only the head's own ``training`` flag is set
    (its batch norms stay in eval mode), which makes ultralytics' Detect return its raw predictions; decoding
    depends on the image size and is done in numpy (:func:`decode_raw`), so one export serves every canvas size."""
    import torch

    head = net.model[-1]

    class Export(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            head.training = True
            try:
                d = self.net(x)
            finally:
                head.training = False
            return d["boxes"], d["scores"]

    return Export().eval()


def onnx_meta(net) -> dict:
    head = net.model[-1]
    return {"strides": [int(v) for v in head.stride.tolist()], "reg_max": int(head.reg_max), "nc": int(head.nc)}


def decode_raw(boxes: np.ndarray, scores: np.ndarray, h: int, w: int, strides=(8, 16, 32), reg_max: int = 16):
    """ultralytics Detect's inference decoding in numpy: [B, 4 + nc, A] (box centre x, y, width, height in pixels;
    class probabilities). Distribution focal loss: each box side is the expectation of a softmax over ``reg_max``
    bins; anchors are the cell centres of each stride's grid, in row-major order (``make_anchors``)."""
    pts, st = [], []
    for s in strides:
        gy, gx = np.meshgrid(np.arange(h // s) + 0.5, np.arange(w // s) + 0.5, indexing="ij")
        pts.append(np.stack([gx.ravel(), gy.ravel()], axis=0))
        st.append(np.full(gx.size, float(s)))
    anchors = np.concatenate(pts, axis=1)[None]  # [1, 2, A]
    stride = np.concatenate(st)[None, None]      # [1, 1, A]
    b = np.asarray(boxes, dtype=np.float64).reshape(boxes.shape[0], 4, reg_max, -1)
    b = np.exp(b - b.max(axis=2, keepdims=True))
    b /= b.sum(axis=2, keepdims=True)
    dist = (b * np.arange(reg_max)[None, None, :, None]).sum(axis=2)  # [B, 4, A]: left, top, right, bottom
    x1y1 = anchors - dist[:, :2]
    x2y2 = anchors + dist[:, 2:]
    xywh = np.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], axis=1) * stride
    cls = 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))
    return np.concatenate([xywh, cls], axis=1)


def nms(pred: np.ndarray, conf: float = 0.001, iou: float = 0.5, max_det: int = 50) -> np.ndarray:
    """Multi-label, class-aware greedy non-maximum suppression of one image's decoded predictions [4 + nc, A]
    (ultralytics ``non_max_suppression(multi_label=True)``: every (box, class) pair above ``conf`` is a candidate,
    boxes of one class suppress each other above ``iou``). Written in numpy because torchvision's ``nms`` needs
    torch; at our <= 2 000 anchors the quadratic loop over kept boxes is negligible. Returns [n, 6] (x1, y1, x2, y2,
    confidence, class), most confident first."""
    xywh, cls = pred[:4].T, pred[4:].T
    i, j = np.nonzero(cls > conf)
    if i.size == 0:
        return np.zeros((0, 6), dtype=np.float32)
    xy = xywh[i, :2]
    wh = xywh[i, 2:]
    box = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)
    score = cls[i, j]
    order = np.argsort(-score, kind="stable")
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    for a, k in enumerate(order):
        if suppressed[a]:
            continue
        keep.append(k)
        if len(keep) >= max_det:
            break
        rest = order[a + 1 :]
        same = j[rest] == j[k]
        ix1 = np.maximum(box[k, 0], box[rest, 0])
        iy1 = np.maximum(box[k, 1], box[rest, 1])
        ix2 = np.minimum(box[k, 2], box[rest, 2])
        iy2 = np.minimum(box[k, 3], box[rest, 3])
        inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
        over = inter / (area[k] + area[rest] - inter + 1e-12)
        suppressed[a + 1 :] |= same & (over > iou)
    keep_a = np.asarray(keep)
    return np.concatenate([box[keep_a], score[keep_a, None], j[keep_a, None]], axis=1).astype(np.float32)


def landmarks_from_detections(det: np.ndarray, region: str, geom: dict) -> dict[str, dict]:
    """{landmark: {z_mm, confidence}} from one projection image's detections: for each landmark class the most
    confident box (bilateral chest landmarks: the mean of the two most confident boxes whose confidence is at
    least half the best one's); z = z_top - (box centre row - 0.5) x mm_px."""
    out = {}
    mm = geom["mm_px"]
    for ci, name in enumerate(LANDMARKS[region]):
        d = det[det[:, 5] == ci]
        if not len(d):
            out[name] = {"z_mm": None, "confidence": 0.0}
            continue
        d = d[np.argsort(-d[:, 4])]
        take = d[:1]
        if name in BILATERAL and len(d) > 1 and d[1, 4] >= 0.5 * d[0, 4]:
            take = d[:2]
        yc = float(np.mean((take[:, 1] + take[:, 3]) / 2))
        out[name] = {"z_mm": geom["z_top_mm"] - (yc - 0.5) * mm, "confidence": float(d[0, 4])}
    return out


# ------------------------------------------------------------------------------------------ shipped models
@functools.lru_cache(maxsize=4)
def _load(model: str, manifest: str | None):
    from detectors import weights

    man = Path(manifest) if manifest else weights.MANIFEST
    name = WEIGHTS_NAME.format(model=model)
    entry = weights.model_entry(name, man)
    names = list(entry.get("classes", []))
    if names != list(classes(model)):
        raise weights.WeightsError(f"'{name}' was trained for classes {names}, this code expects {list(classes(model))}",
                                   man)
    state = weights.load_tensors(name, man)
    return model_from_state(state, len(names), float(entry.get("width", 0.25))), entry


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise QCInputError(f"detector must be one of {', '.join(MODELS)}, not {model!r}")


def load_model(model: str, manifest: Path | None = None):
    """(network in eval mode, manifest entry) of the shipped ``yolo_<model>`` weights (sha256-verified); model =
    'head' | 'chest' (landmarks) | 'artifacts'."""
    _check_model(model)
    return _load(model, str(manifest) if manifest else None)


def shipped_model(model: str, manifest: Path | None = None):
    """The shipped torch network, or None when its weights are missing (not trained yet)."""
    from detectors.weights import WeightsError

    try:
        return load_model(model, manifest)[0]
    except WeightsError:
        return None


def default_model(model: str, manifest: Path | None = None):
    """What detection runs when given no network: the ONNX export when it verifies (no torch import), else the
    torch network; None when neither is available. A non-default ``manifest`` always means its torch weights."""
    from detectors import runtime

    if manifest is not None:
        return shipped_model(model, manifest)
    _check_model(model)
    return runtime.default_model(WEIGHTS_NAME.format(model=model), lambda: shipped_model(model))


def detect_landmarks(hu, spacing, z_positions, region: str, *, origin_xy=(0.0, 0.0), direction=None, net=None,
                     manifest: Path | None = None) -> dict[str, dict]:
    """{landmark: {"z_mm": patient z (mm) or None, "confidence": 0..1}} of one volume (``hu`` [z, y, x]).

    The region's projection image (:func:`projection_image`, framed by :func:`frame_projection`) is passed once
    through the network; each landmark's z is its best box's centre row converted back
    with the image's mm grid (see :func:`landmarks_from_detections`). A landmark with confidence below ~0.25 is
    probably not in the scan. All None when the shipped weights are missing."""
    net = net if net is not None else default_model(region, manifest)
    if net is None:
        return {k: {"z_mm": None, "confidence": None} for k in LANDMARKS[region]}
    img, geom = frame_projection(*projection_image(hu, spacing, z_positions, region, origin_xy=origin_xy,
                                                   direction=direction), region)
    det = _forward(net, [img])[0]
    return landmarks_from_detections(det, region, geom)


def detect_landmarks_scan(scan, region: str, net=None, manifest: Path | None = None) -> dict[str, dict]:
    """:func:`detect_landmarks` of a :class:`qc.io.Scan`."""
    return detect_landmarks(scan.hu, scan.spacing, scan.z_positions_mm(), region, origin_xy=scan.origin[:2],
                            direction=scan.direction, net=net, manifest=manifest)


def artifact_slices(hu, max_slices: int = 24) -> np.ndarray:
    """Slices the artifact detector reads: every slice that holds metal (> 2500 HU: metal streaks start there)
    plus up to ``max_slices`` evenly spaced others."""
    hu = np.asarray(hu)
    nz = hu.shape[0]
    even = np.unique(np.linspace(0, nz - 1, min(nz, max_slices)).round().astype(int))
    metal = np.nonzero(hu.reshape(nz, -1).max(axis=1) > 2500)[0]
    return np.union1d(even, metal)


def artifact_ensemble(manifest: Path | None = None) -> list:
    """The artifact ensemble's networks that are available (each as :func:`default_model` gives it), in
    :data:`ARTIFACT_MODELS` order; empty when none is."""
    return [n for n in (default_model(m, manifest) for m in ARTIFACT_MODELS) if n is not None]


def detect_artifacts(hu, pixel_mm: float, *, net=None, manifest: Path | None = None, max_slices: int = 24,
                     batch: int = 8) -> dict[str, dict]:
    """{artifact: {"score": per-scan score 0..1, "slice": the index of the slice with the most confident box}} for
    metal streaks, motion and rings; ``pixel_mm``: the in-plane pixel size. A network's per-scan score is the most
    confident box of that class on any read slice (:func:`artifact_slices`); with several networks (``net`` a list,
    or by default the shipped ensemble :func:`artifact_ensemble`) the score is the mean of theirs. All None when no
    weights are available."""
    nets = list(net) if isinstance(net, (list, tuple)) else ([net] if net is not None else artifact_ensemble(manifest))
    if not nets:
        return {a: {"score": None, "slice": None} for a in ARTIFACTS}
    hu = np.asarray(hu)
    if hu.ndim == 2:
        hu = hu[None]
    ks = artifact_slices(hu, max_slices)
    best = [{a: (0.0, None) for a in ARTIFACTS} for _ in nets]
    for b0 in range(0, len(ks), batch):
        kk = ks[b0 : b0 + batch]
        images = [axial_image(hu[k], pixel_mm) for k in kk]
        for j, n in enumerate(nets):
            for k, det in zip(kk, _forward(n, images)):
                for i, a in enumerate(ARTIFACTS):
                    d = det[det[:, 5] == i]
                    if len(d) and float(d[:, 4].max()) > best[j][a][0]:
                        best[j][a] = (float(d[:, 4].max()), int(k))
    out = {}
    for a in ARTIFACTS:
        top = max((b[a] for b in best), key=lambda v: v[0])
        out[a] = {"score": float(np.mean([b[a][0] for b in best])), "slice": top[1]}
    return out


# ------------------------------------------------------------------------------------------ evaluation
def evaluate_landmarks(net, region: str, items: list[dict]) -> dict:
    """Per-landmark |z_detected - z_true| (mm) on projection items whose landmarks are all in the scan: MAE,
    median, max, n, and the number of misses (no box at all); plus seconds per image of the network part."""
    errs = {k: [] for k in LANDMARKS[region]}
    confs = {k: [] for k in LANDMARKS[region]}
    t0 = time.perf_counter()
    for it in items:
        det = _forward(net, [it["image"]])[0]
        got = landmarks_from_detections(det, region, it["geom"])
        for k, v in got.items():
            if not it["present"].get(k, True):
                continue
            errs[k].append(float("nan") if v["z_mm"] is None else abs(v["z_mm"] - it["truth_z"][k]))
            confs[k].append(v["confidence"])
    dt = (time.perf_counter() - t0) / max(1, len(items))
    out = {}
    for k, e in errs.items():
        e = np.asarray(e, float)
        ok = e[np.isfinite(e)]
        out[k] = {"mae_mm": float(ok.mean()) if ok.size else None, "median_mm": float(np.median(ok)) if ok.size else None,
                  "max_mm": float(ok.max()) if ok.size else None, "n": int(e.size), "missed": int((~np.isfinite(e)).sum()),
                  "min_confidence": float(np.min(confs[k])) if confs[k] else None}
    return {"landmarks": out, "network_s_per_image": dt, "n_scans": len(items)}


def heldout_landmark_items(region: str, n: int, seed0: int | None = None, workers: int = 1,
                           matrix: int | None = None) -> list[dict]:
    s0 = HELDOUT_SEED0[region] if seed0 is None else seed0
    return _map(landmark_item, [(region, s0 + i, True, matrix) for i in range(n)], workers)


def _registry_inputs(scan, region: str) -> dict:
    """The registry inputs of a scan, as qc.pipeline.assess builds them (classical masks)."""
    from qc.pipeline import compute_masks, isocenter_index

    return {"hu": scan.hu, "spacing": scan.spacing, "fov": scan.fov, "z_positions": scan.z_positions_mm(),
            "isocenter_xy": isocenter_index(scan), "metadata": scan.metadata, "region": region, **compute_masks(scan)}


#: the explicit IQM (metrics/artifacts.py) that measures each artifact class (as in tests/test_artifacts.py)
EXPLICIT_IQM = {"metal": "streak_index_hu", "motion": "motion_index_hu", "ring": "ring_index_hu"}


def artifact_heldout_cases(region: str, n: int = 10, n_slices: int = 2, seed0: int | None = None, workers: int = 1,
                           matrix: int | None = None):
    """Held-out artifact scans (``n_slices`` 2.5 mm slices each, 128 matrix, severity 0.5): ``n`` with each artifact
    class, ``n`` without any artifact, ``n`` with streak-free metal. Returns [(kind, HU [n_slices, y, x], explicit
    IQM values {artifact: value}, in-plane pixel mm)]."""
    s0 = ART_HELDOUT_SEED0[region] if seed0 is None else seed0
    jobs = [(region, s0 + 100 * j + i, kind, n_slices, matrix) for j, kind in enumerate(ART_KINDS) for i in range(n)]
    return _map(_heldout_artifact_case, jobs, workers)


def _heldout_artifact_case(region, seed, kind, n_slices, matrix=None):
    from metrics.registry import get_registry

    hu, _mask, scan = simulate_artifact_slices(region, seed, kind, n_slices=n_slices, heldout=True, matrix=matrix)
    reg = get_registry()
    av = _registry_inputs(scan, region)
    iqm = {a: reg[name].compute(av) for a, name in EXPLICIT_IQM.items()}
    return kind, np.asarray(hu), {a: (float("nan") if v is None else float(v)) for a, v in iqm.items()}, scan.spacing[2]


def _auc(pos, neg) -> float | None:
    """ROC AUC (Mann-Whitney, ties count half); an unmeasured value (NaN) ranks lowest."""
    pos, neg = np.nan_to_num(np.asarray(pos, float), nan=-np.inf), np.nan_to_num(np.asarray(neg, float), nan=-np.inf)
    if not pos.size or not neg.size:
        return None
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def evaluate_artifacts(net, cases) -> dict:
    """Per artifact class: ROC AUC of the YOLO per-scan score (max box confidence over the slices) and of the
    explicit IQM on the same held-out scans; positives = scans with that artifact, negatives = artifact-free scans
    (+ the streak-free-metal scans for 'metal'; the other artifact classes are not counted as negatives)."""
    t0 = time.perf_counter()
    yolo = [detect_artifacts(hu, px, net=net) for _k, hu, _i, px in cases]
    dt = (time.perf_counter() - t0) / max(1, len(cases))
    out = {}
    for a in ARTIFACTS:
        negk = ("none", "metal_clean") if a == "metal" else ("none",)
        pos = [i for i, c in enumerate(cases) if c[0] == a]
        neg = [i for i, c in enumerate(cases) if c[0] in negk]
        ys = [yolo[i][a]["score"] for i in pos], [yolo[i][a]["score"] for i in neg]
        ex = [cases[i][2][a] for i in pos], [cases[i][2][a] for i in neg]
        out[a] = {"yolo_auc": _auc(*ys), "explicit_iqm": EXPLICIT_IQM[a], "explicit_auc": _auc(*ex),
                  "n_pos": len(pos), "n_neg": len(neg),
                  "yolo_scores_pos": [round(v, 3) for v in ys[0]], "yolo_scores_neg": [round(v, 3) for v in ys[1]]}
    return {"artifacts": out, "network_s_per_scan": dt, "n_scans": len(cases)}


# ------------------------------------------------------------------------------------------ cache, train_and_save
def save_items(items: list[dict], path: Path) -> None:
    """Simulated items as .npz (images stacked; boxes and metadata as JSON text): no pickle."""
    import json

    meta = [{k: v for k, v in it.items() if k not in ("image",)} for it in items]
    np.savez_compressed(path, images=np.stack([it["image"] for it in items]),
                        meta=np.array(json.dumps(meta, default=float)))


def load_items(path: Path) -> list[dict]:
    import json

    with np.load(path, allow_pickle=False) as z:
        imgs = z["images"]
        meta = json.loads(str(z["meta"]))
    out = []
    for img, m in zip(imgs, meta):
        m["boxes"] = [tuple(b) for b in m["boxes"]]
        out.append({"image": img, **m})
    return out


def _cached(cache: Path | None, name: str, make):
    from qc.safe_names import safe_child

    if cache is None:
        return make()
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    f = safe_child(cache, name, ".npz")
    if f.exists():
        return load_items(f)
    items = make()
    save_items(items, f)
    return items


def train_and_save(model: str, *, n_train: int | None = None, epochs: int = 20, batch: int = 8, seed: int = 0,
                   n_heldout: int | None = None, max_minutes: float | None = None, out_dir: Path | None = None,
                   cache: Path | None = None, work_dir: Path | None = None, workers: int = 1, fp16: bool = True,
                   matrix: int | None = None, width: float = WIDTH, log=print) -> dict:
    """``qc train det``: simulate (or read from ``cache``) the training images, train yolo11n with ultralytics,
    measure on held-out simulated scans, save the state dict as ``yolo_<model>.safetensors`` in ``out_dir``
    (default: the shipped weights folder) and register it in that folder's manifest. Returns the entry.

    model 'head' / 'chest': ``n_train`` (default 160) simulated volumes -> projection images, landmark MAE on
    ``n_heldout`` (default 30) held-out volumes. model 'artifacts': ``n_train`` (default 120) axial slices per
    region (head and chest), AUC on ``n_heldout`` (default 10) held-out scans per kind and region."""
    import tempfile

    import torch

    from detectors import weights
    from qc.safe_names import safe_child

    _check_model(model)
    art = model in ARTIFACT_MODELS
    n_train = int(n_train if n_train is not None else (120 if art else 160))
    n_heldout = int(n_heldout if n_heldout is not None else (10 if art else 30))
    if n_train < 1 or epochs < 1:
        raise QCInputError("n_train and epochs must be at least 1")
    t0 = time.perf_counter()
    tag = f"_m{int(matrix)}" if matrix else ""
    regions = ("head", "chest") if art else (model,)
    items: list[dict] = []
    for region in regions:
        if art:
            # the cache key names the image/box version: v5 = streak channel (clipped), metal boxes, twins;
            # v6 = ring channel as a z-score
            items += _cached(cache, f"yolo_{region}_artifacts_v6_{seed}_{n_train}{tag}",
                             lambda: training_items(region, 0, n_train, seed=seed, workers=workers, log=log,
                                                    matrix=matrix))
        else:
            items += _cached(cache, f"yolo_{region}_landmarks_{seed}_{n_train}{tag}",
                             lambda: training_items(region, n_train, 0, seed=seed, workers=workers, log=log,
                                                    matrix=matrix))
    held = []
    if n_heldout and not art:
        held = _cached(cache, f"yolo_{model}_heldout_{n_heldout}{tag}",
                       lambda: heldout_landmark_items(model, n_heldout, workers=workers, matrix=matrix))
    t_data = time.perf_counter() - t0
    val = held[: min(8, len(held))] or items[:: max(1, len(items) // 8)][:8]
    tmp = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="qc_yolo_"))
    try:
        data_yaml = write_dataset(items, val, model, tmp / "data")
        threads = torch.get_num_threads()
        net, info = train_yolo(data_yaml, epochs=epochs, batch=batch, seed=seed, max_minutes=max_minutes,
                               work_dir=tmp / "runs", log=log, width=width)
        torch.set_num_threads(threads)  # ultralytics resets the thread count for CPU training
    finally:
        if work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    state = state_for_saving(net, fp16=fp16)
    net = model_from_state(state, len(classes(model)), width)  # measure exactly what is shipped (fp16 round trip)
    metrics: dict = {}
    if held:
        metrics["landmarks_heldout"] = evaluate_landmarks(net, model, held)
        if log:
            for k, m in metrics["landmarks_heldout"]["landmarks"].items():
                log(f"  {k:20s} MAE {m['mae_mm']:.2f} mm (max {m['max_mm']:.2f}, n={m['n']}, missed {m['missed']})")
    if art and n_heldout:
        for region in regions:
            cases = artifact_heldout_cases(region, n_heldout, workers=workers, matrix=matrix)
            metrics[f"artifacts_heldout_{region}"] = evaluate_artifacts(net, cases)
            if log:
                for a, m in metrics[f"artifacts_heldout_{region}"]["artifacts"].items():
                    log(f"  {region} {a:8s} AUC yolo {m['yolo_auc']:.3f}  explicit {m['explicit_iqm']} "
                        f"{m['explicit_auc']:.3f}")
    out = Path(out_dir) if out_dir is not None else weights.WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    name = WEIGHTS_NAME.format(model=model)
    path = safe_child(out, name, ".safetensors")
    save_file(state, str(path), metadata={"model": MODEL_YAML, "detector": model, "classes": ",".join(classes(model))})
    import ultralytics

    if art:
        inp = (f"axial slice resized to {AXIAL_PX} px: window -500..700 HU; ring residual + streak coherence "
               "-20..20 HU (ring_residual_image z-score x 4 HU + streak_coherence_image); air window -1024..-824 HU")
        data = (f"{n_train} single axial slices per region (head seeds {ART_TRAIN_SEED0['head'] + 1000 * seed}+i, chest "
                f"seeds {ART_TRAIN_SEED0['chest'] + 1000 * seed}+i; kinds cycling {'/'.join(TRAIN_KINDS)}, each "
                "metal_clean slice the streak-free twin (same seed) of the metal slice before it; severity "
                "0.25-1; matrix 128/256; projection-model artifacts of phantoms.simulate)")
        held_desc = (f"{n_heldout} scans per kind ({'/'.join(ART_KINDS)}) and region, 2 slices of 2.5 mm, 128 matrix, "
                     f"severity 0.5; seeds {ART_HELDOUT_SEED0['head']}+ (head), {ART_HELDOUT_SEED0['chest']}+ (chest)")
    else:
        cfg = REGION_VIEW[model]
        inp = (f"{cfg['view']} projection image at {cfg['mm_px']} mm/px (DRR, MIP, tissue mean HU; projection_image), "
               f"canvas >= {cfg['canvas']} px; landmark box sides (mm) {LANDMARKS[model]}")
        data = (f"{n_train} simulated {model} volumes (phantoms.simulate image mode, seeds "
                f"{TRAIN_SEED0[model] + 1000 * seed}+i; landmark_case_params: matrix 128/192/256, slice 1.25/2.5/5 mm, "
                "random pose, table shift and scan range, 12 % with the top or bottom landmark cut)")
        held_desc = (f"{n_heldout} volumes, seeds {HELDOUT_SEED0[model]}+i (matrix 128/192/256/512, slice 1.25/2.5/3/5 "
                     "mm, random pose and scan range, all landmarks in range)")
    entry = {
        "kind": f"ultralytics YOLO detection (yolo11n.yaml at channel width {width:g}, random init), state dict in safetensors"
                + (" (fp16)" if fp16 else ""),
        "version": f"{name}-2", "detector": model, "model_yaml": MODEL_YAML, "width": float(width),
        "classes": list(classes(model)),
        "nc": len(classes(model)), "input": inp,
        "training": {
            "data": data,
            "command": (f"qc train det --region {model} --n-train {n_train} --epochs {epochs} --batch {batch} "
                        f"--seed {seed}" + (f" --max-minutes {max_minutes:g}" if max_minutes else "")),
            "hyper": {**HYPER, "batch": batch, "imgsz": 256, "nbs": batch, "amp": False},
            "seed": seed, "simulate_s": round(t_data, 1), **info, "torch": torch.__version__,
            "ultralytics": ultralytics.__version__,
        },
        "heldout_data": held_desc,
        "metrics": metrics,
    }
    full = weights.register(name, path, entry, out / "manifest.json")
    _load.cache_clear()
    return full
