"""Noise2Quality (Haque, Wang, Imran; SPIE Medical Imaging 2022, vol. 12035): a U-Net that predicts the
per-pixel SSIM map between a low-dose CT slice and its (unseen) full-dose counterpart, with an auxiliary
five-class dose-level head. Reproduced at CPU size.

Paper design (from the paper's page and the authors' notebook, github.com/ayaanzhaque/Noise2Quality):
abdominal Mayo LDCT slices, windowed W300/L40 to [0, 1] and resized to 256 x 256; input = the low-dose slice and
a high-pass-filtered copy of it (slice minus its blurred copy); target = the SSIM map (Wang et al. 2004: 11 x 11
Gaussian window, sigma 1.5, K1 0.01, K2 0.03, L = 1) between the full-dose and the low-dose slice; dose levels
5, 10, 25, 50, 75 % made by scaling the independent quarter-dose noise (I_fd + a (I_qd - I_fd),
a = sqrt((1/D - 1)/3)); a U-Net of widths 16-32-64-128-256 (two 3 x 3 convs per block, instance norm, LeakyReLU
0.2, dropout 0.25, bilinear up-sampling, tanh output) whose bottleneck feeds a global average pool and a
linear 5-way dose classifier; loss = map loss + alpha CE(dose), alpha = 0.01; Adam lr 2e-4, batch 16,
15 epochs. Reported: SSIM 0.7664 and NRMSE 0.2437 between the predicted and the true maps.

Reproduced here:

* **Network**: MONAI ``BasicUNet`` (2-D, five resolution levels, two 3 x 3 convs per block, LeakyReLU 0.2,
  bilinear (non-trainable) up-sampling, 1 x 1 output conv, then tanh), its bottleneck (``down_4``) read
  through its sub-modules for the dose head: average pool, then one linear layer to 5 logits.
* **Input** (2 channels on the 256 x 256 grid): the low-dose slice in the display window mapped to [-1, 1]
  (the notebook's ``Normalize(0.5, 0.5)``: ``(w - 0.5) / 0.5``), and the high-pass channel
  ``10 (w - G_1.1(w))`` (w = windowed slice in [0, 1], G_1.1 = Gaussian blur, sigma 1.1 px = OpenCV's 5 x 5
  kernel; x 10 so the channel is O(1) - 1 unit = 40 HU).
* **Display window and SSIM**: **W400 / L40 HU** (soft tissue; the paper's abdominal W300/L40 widened to the
  chest and head soft-tissue window), mapped to [0, 1], so ``data_range = 1`` (= 400 HU).
  ``skimage.metrics.structural_similarity(full, low, data_range=1, win_size=11, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, full=True)[1]`` = the paper's Gaussian 11 x 11 SSIM (skimage filters
  with reflected edges and keeps the full size; the notebook used a 'valid' convolution and resized it back).
* **Low-dose levels** by noise insertion: low = full + sigma_full sqrt(1/f - 1) n, n an independent draw of the
  simulator's NPS-shaped noise (:func:`phantoms.simulate.shaped_noise`, the FBP NPS of the kernel),
  f in {5, 10, 25, 50, 75} % - exactly the variance the paper's scaling of the quarter-dose noise gives.
* **Loss** MSE(map) + alpha CE(dose), **alpha = 0.01** (the notebook's value; the notebook's map loss was L1,
  the paper's text says MSE, which is used here).

Deviations at CPU size (recorded in the weights manifest):

* **Widths 8-16-32-64-128** (``--full``: the paper's 16-32-64-128-256 and dropout 0.25, for a GPU); 0.46 M
  parameters, 1.8 MB.
* **No instance norm** (``--norm instance`` puts it back): instance norm divides every feature map by its own
  spatial SD, which removes the absolute noise magnitude that SSIM depends on, and makes the features depend on
  how much air the field of view holds (training crops vs. whole slices at inference).
* **No dropout** in the CPU configuration (a few thousand iterations leave nothing to regularise).
* **Training on random 96 x 96 crops** of the 256 x 256 slices, centred on a body pixel, with left-right flips
  (7x cheaper); inference on the whole 256 x 256 slice (the network is fully convolutional).
* **Output bias initialised to 1** (tanh(1) = 0.76, near the typical SSIM) and **Adam lr 2e-3** with cosine decay,
  batch 8 (paper: 2e-4 constant, batch 16). Measured in 5-minute runs on 320 training slices (40 held-out
  slices x 5 levels): 128 crops, zero bias, lr 1e-3 - the map stayed near a constant (body RMSE 0.32, dose at
  chance 0.18 after 315 batches), the same with instance norm worse (0.45, 0.22 after 266 batches); 96 crops,
  bias 1, lr 2e-3, no norm - body RMSE 0.096, dose 0.72 after 525 batches (instance norm was not retried with
  these settings); a x 30 instead of x 10 high-pass scale changed nothing (0.098, 0.70).
* **Body-masked pooling for the dose head**: the bottleneck is averaged over the body (the slice's
  > -500 HU region, holes filled, down-sampled to the bottleneck grid) instead of the whole field, so a crop
  and a whole slice present the dose head the same statistic.
* **Data**: simulated chest and head slices (:mod:`phantoms.simulate`, image mode, smooth kernel, 512 matrix,
  chest 5 mm, head 2.5 mm slices, random patient, random table position), instead of the Mayo abdomen scans.
  Full dose = the routine dose of an automatic-exposure-controlled scanner, as in the Mayo data: the full-dose
  noise SD is the simulator's at the region's default mAs for a reference patient (WED 250 mm chest, 180 mm
  head: 18.5 / 16.5 HU at the 512 matrix), times a log-normal spread (SD 0.15), whatever the patient's size.
  Without that, the full-dose noise alone would vary 5x over the simulated chest sizes, and neither the dose
  level nor the map would be defined by the low-dose image.

Evaluation (the paper's metrics, per held-out map, then averaged; the paper's evaluation code is not public, so
the definitions are ours): ``map_ssim`` = ``skimage.metrics.structural_similarity(true, pred, data_range=2)``
(7 x 7 uniform window: the skimage default the notebook's ``compare_ssim`` would use; data range 2 = the SSIM
value range [-1, 1], the old skimage default for float images); ``nrmse`` =
``skimage.metrics.normalized_root_mse(true, pred)`` = ||true - pred||_2 / ||true||_2 over the whole 256 x 256
map (skimage's default 'euclidean' normalisation); also reported: ``nrmse_body`` (the same inside the body
only, where the map is not trivially 1), ``rmse_body`` and ``nrmse_minmax`` = RMSE / (max - min of the true map);
``dose_acc`` = accuracy of the 5-class dose head.

Volume outputs (:func:`predict_volume`): the 3 central body slices (middle of the slices with body), each
predicted on its own; ``n2q_mean_ssim`` = mean predicted SSIM inside the body over those slices,
``n2q_dose_level_pct`` = sum_k P(level k) level_k with the slice-averaged probabilities. Deterministic (eval mode,
no randomness, one torch thread). Measured numbers below and in the weights manifest (entry ``noise2quality``).

Measured (shipped weights, ``qc train n2q --n 480 --epochs 16 --max-minutes 25``: 480 slices x 5 levels simulated
in 213 s with 2 processes, then 4800 batches in 756 s on 1 CPU thread of the shared 2-core machine; 1.8 MB).
Held-out: 40 simulated slices (20 chest, 20 head; seeds 40000-40039) x 5 levels = 200 maps:

=========================  ========  =====================================================================
metric                     ours      note
=========================  ========  =====================================================================
map SSIM                   0.918     paper 0.7664 (real abdominal LDCT, their map normalisation)
NRMSE (whole map)          0.049     paper 0.2437; target <= 0.25
NRMSE inside the body      0.101     body RMSE 0.076; mean-SSIM-in-body abs. error 0.024
dose-level accuracy        0.715     5 classes; Bayes ceiling of this data design 0.776 (see below)
=========================  ========  =====================================================================

Per level (5/10/25/50/75 %): body RMSE 0.083/0.087/0.088/0.073/0.047, dose accuracy 0.93/0.65/0.80/0.48/0.73;
chest NRMSE 0.041, head 0.057. For scale, the true map of the same slices with an *independent* noise draw
differs from the true map by NRMSE 0.049, body RMSE 0.075, map SSIM 0.900: the prediction is as close to the truth
as another noise realisation of the truth is (the per-pixel SSIM of one noise draw is itself noisy). The dose
ceiling: with the low-dose noise SD known exactly, the full-dose spread (log-normal SD 0.15) alone overlaps
neighbouring levels (25 -> 50 -> 75 % differ by only 0.35 and 0.20 in ln noise SD) and allows 0.776.
Like the paper's numbers, ours are on the training distribution's kind of data (here: the simulator), not on
real scans; the NRMSE over the whole 256 x 256 map is low because air, lung and bone are clipped by the window
in both images, where SSIM = 1 exactly and the network gets it right.

Inference: :func:`predict_volume` on a 512 x 512 x 300 chest (``benchmarks/bench_n2q.py``) 0.19 s wall on the
loaded 2-core machine (1 torch thread, see :func:`_run`); the network alone 0.06 s per 256 x 256 slice.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from detectors import runtime

WEIGHTS_NAME = "noise2quality"
WINDOW = (40.0, 400.0)                   # level, width (HU): the display window of the SSIM and of the input
SIZE = 256                               # processing grid (the paper resizes 512 -> 256)
CROP = 96                                # training crop
DOSE_LEVELS_PCT = (5, 10, 25, 50, 75)    # the paper's five classes
HPF_SIGMA = 1.1                          # px: OpenCV's 5 x 5 Gaussian default sigma
HPF_SCALE = 10.0
SSIM_WIN, SSIM_SIGMA = 11, 1.5
ALPHA = 0.01                             # loss = MSE(map) + ALPHA CE(dose)
BODY_HU = -500.0
N_SLICES = 3                             # central body slices per volume
CPU_CONFIG = {"features": [8, 16, 32, 64, 128, 8], "dropout": 0.0, "norm": "none", "lr": 2e-3, "batch": 8}
FULL_CONFIG = {"features": [16, 32, 64, 128, 256, 16], "dropout": 0.25, "norm": "instance", "lr": 2e-4, "batch": 16}
TRAIN_SEED0 = 30_000                     # simulated training slices: seeds TRAIN_SEED0 + 1000 seed + i
HELDOUT_SEED0 = 40_000                   # held-out slices (benchmark, tests): disjoint seeds
SIM_MATRIX = 512
REGIONS = ("chest", "head")
Z_RANGE_MM = {"chest": (-130.0, 50.0), "head": (-25.0, 60.0)}  # slice positions (carina / head centre at 0)
WED_REF_MM = {"chest": 250.0, "head": 180.0}
FULL_DOSE_SPREAD = 0.15                  # SD of ln(full-dose noise) around the reference


# ----------------------------------------------------------------------------------- image processing
def window01(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] in the W400/L40 display window (clipped)."""
    lo = WINDOW[0] - WINDOW[1] / 2
    return np.clip((np.asarray(hu, np.float32) - lo) / WINDOW[1], 0.0, 1.0).astype(np.float32)


def to_grid(img: np.ndarray, order: int = 1) -> np.ndarray:
    """Resample a 2-D image to SIZE x SIZE (bilinear with anti-aliasing, as the paper's ``resize``); a no-op
    when it already is."""
    if img.shape == (SIZE, SIZE):
        return np.asarray(img, np.float32)
    from skimage.transform import resize

    return resize(np.asarray(img, np.float32), (SIZE, SIZE), order=order, anti_aliasing=order > 0,
                  preserve_range=True).astype(np.float32)


def body_mask_2d(hu_slice: np.ndarray) -> np.ndarray:
    """Body on the SIZE grid: > -500 HU, holes filled (at the native resolution), then resampled."""
    from scipy import ndimage as ndi

    m = ndi.binary_fill_holes(np.asarray(hu_slice) > BODY_HU)
    return to_grid(m.astype(np.float32)) > 0.5


def prepare_slice(hu_slice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(windowed slice in [0, 1] on the SIZE grid, body mask on that grid): window first, then resize (paper)."""
    hu_slice = np.asarray(hu_slice, np.float32)
    return to_grid(window01(hu_slice)), body_mask_2d(hu_slice)


def input_channels(w: np.ndarray) -> np.ndarray:
    """Network input [..., 2, H, W] from windowed slices w [..., H, W] in [0, 1]: (2 w - 1, 10 (w - G_1.1 w))."""
    from scipy import ndimage as ndi

    w = np.asarray(w, np.float32)
    sig = (0,) * (w.ndim - 2) + (HPF_SIGMA, HPF_SIGMA)
    hp = (w - ndi.gaussian_filter(w, sigma=sig, mode="reflect")) * HPF_SCALE
    return np.ascontiguousarray(np.stack([2.0 * w - 1.0, hp], axis=-3), dtype=np.float32)


def ssim_map(full_w: np.ndarray, low_w: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM between the windowed full-dose and low-dose slices (both in [0, 1], data range 1):
    11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03 (Wang et al. 2004, as the paper)."""
    from skimage.metrics import structural_similarity

    _, s = structural_similarity(np.asarray(full_w, np.float64), np.asarray(low_w, np.float64), data_range=1.0,
                                 win_size=SSIM_WIN, gaussian_weights=True, sigma=SSIM_SIGMA,
                                 use_sample_covariance=False, full=True)
    return s.astype(np.float32)


# ------------------------------------------------------------------------------------------- metrics
def map_metrics(true: np.ndarray, pred: np.ndarray, body: np.ndarray | None = None) -> dict:
    """The paper's map metrics for one map (definitions in the module docstring)."""
    from skimage.metrics import normalized_root_mse, structural_similarity

    true = np.asarray(true, np.float64)
    pred = np.asarray(pred, np.float64)
    out = {"map_ssim": float(structural_similarity(true, pred, data_range=2.0)),
           "nrmse": float(normalized_root_mse(true, pred)),
           "nrmse_minmax": float(normalized_root_mse(true, pred, normalization="min-max"))}
    if body is not None and body.sum() > 0:
        t, p = true[body], pred[body]
        out["rmse_body"] = float(np.sqrt(np.mean((t - p) ** 2)))
        out["nrmse_body"] = float(np.linalg.norm(t - p) / max(np.linalg.norm(t), 1e-12))
    return out


# --------------------------------------------------------------------------------------------- network
def build_model(features=tuple(CPU_CONFIG["features"]), dropout: float = 0.0, norm: str = "none"):
    """MONAI BasicUNet (2-D, 2 input channels, tanh map output) + a 5-way dose head on the masked-pooled
    bottleneck. Architecture in buffers, so a state dict is self-describing."""
    import torch
    import torch.nn.functional as F
    from monai.networks.nets import BasicUNet
    from torch import nn

    norm_arg = ("instance", {"affine": True}) if norm == "instance" else None

    class Noise2QualityNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = BasicUNet(spatial_dims=2, in_channels=2, out_channels=1, features=tuple(features),
                                  act=("LeakyReLU", {"negative_slope": 0.2, "inplace": True}), norm=norm_arg,
                                  dropout=dropout, upsample="nontrainable")
            self.dose = nn.Linear(int(features[4]), len(DOSE_LEVELS_PCT))
            with torch.no_grad():  # start near the typical SSIM (tanh(1) = 0.76) instead of 0
                self.unet.final_conv.bias.fill_(1.0)
            self.register_buffer("meta_features", torch.tensor(list(features), dtype=torch.int64))
            self.register_buffer("meta_instance_norm", torch.tensor(int(norm == "instance"), dtype=torch.int64))
            self.register_buffer("meta_dropout", torch.tensor(float(dropout)))

        def forward(self, x, mask=None):
            u = self.unet
            x0 = u.conv_0(x)
            x1 = u.down_1(x0)
            x2 = u.down_2(x1)
            x3 = u.down_3(x2)
            x4 = u.down_4(x3)
            y = u.upcat_1(u.upcat_2(u.upcat_3(u.upcat_4(x4, x3), x2), x1), x0)
            smap = torch.tanh(u.final_conv(y))[:, 0]
            pooled = x4.mean(dim=(2, 3))
            if mask is not None:  # body-masked average of the bottleneck (global average where no body)
                m = mask[:, None].float()
                kh, kw = int(m.shape[-2]) // int(x4.shape[-2]), int(m.shape[-1]) // int(x4.shape[-1])
                if kh * int(x4.shape[-2]) == int(m.shape[-2]) and kw * int(x4.shape[-1]) == int(m.shape[-1]):
                    m = F.avg_pool2d(m, (kh, kw))  # = adaptive pooling for divisible sizes, and exportable to ONNX
                else:
                    m = F.adaptive_avg_pool2d(m, x4.shape[-2:])
                wsum = m.sum(dim=(2, 3))
                masked = (x4 * m).sum(dim=(2, 3)) / wsum.clamp_min(1e-6)
                pooled = torch.where(wsum > 0, masked, pooled)
            return smap, self.dose(pooled)

    return Noise2QualityNet()


def model_from_state(state: dict):
    """Rebuild the network from a state dict (architecture read from its buffers), eval mode."""
    model = build_model(features=tuple(int(v) for v in state["meta_features"]),
                        dropout=float(state["meta_dropout"]),
                        norm="instance" if int(state["meta_instance_norm"]) else "none")
    model.load_state_dict(state)
    return model.eval()


def shipped_model(manifest: Path | None = None):
    """The shipped network (sha256-verified), or None when it is missing or fails verification."""
    from detectors import weights

    return weights.shipped_network(WEIGHTS_NAME, model_from_state, manifest)


def _run(model, w: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps [B, H, W] and dose probabilities [B, 5] of windowed slices w [B, H, W] with body masks. A torch model
    runs on one torch thread (restored afterwards): the same summation order on every machine, and for this small
    network a second OpenMP thread did not pay - measured on the shared 2-core machine, 3 slices took 0.12 s on 1
    thread and 0.96 s on 2 (each op waits for the thread whose core is busy). The ONNX export runs on ONNX
    Runtime's own pool (detectors/runtime.py)."""
    from detectors.runtime import OnnxNet

    x = input_channels(w)
    m = np.ascontiguousarray(mask, dtype=np.float32)
    if isinstance(model, OnnxNet):
        smap, logits = model(x, m)
    else:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                smap, logits = (t.numpy() for t in model(torch.from_numpy(x), torch.from_numpy(m)))
        finally:
            torch.set_num_threads(threads)
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(smap, dtype=np.float32), e / e.sum(axis=1, keepdims=True)


def predict_map(hu_slice, spacing=None, model=None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(predicted SSIM map [256, 256], dose-level probabilities [5] for 5, 10, 25, 50, 75 %) of one axial slice
    in HU. The slice is windowed (W400/L40) and resampled to 256 x 256 whatever its matrix (as the paper), so the
    map's pixel is (rows x spacing[-2] / 256, columns x spacing[-1] / 256) mm; ``spacing`` (dy, dx) or
    (dz, dy, dx) is only checked. (None, None) when the shipped weights are missing."""
    from qc.errors import QCInputError

    hu_slice = np.asarray(hu_slice)
    if hu_slice.ndim != 2 or min(hu_slice.shape) < 16:
        raise QCInputError(f"predict_map needs one 2-D axial slice of at least 16 x 16 pixels, got shape {hu_slice.shape}")
    if spacing is not None and (len(spacing) not in (2, 3) or not all(np.isfinite(s) and s > 0 for s in spacing)):
        raise QCInputError(f"spacing must be (dy, dx) or (dz, dy, dx) positive mm, got {spacing}")
    model = model if model is not None else runtime.default_model(WEIGHTS_NAME, shipped_model)
    if model is None:
        return None, None
    w, body = prepare_slice(np.nan_to_num(hu_slice.astype(np.float32), nan=-1024.0))
    smap, probs = _run(model, w[None], body[None])
    return smap[0], probs[0]


def central_body_slices(hu: np.ndarray, n: int = N_SLICES) -> np.ndarray:
    """Indices of ``n`` consecutive slices at the middle of the slices holding body (> -500 HU on > 2 % of the
    slice); edge-replicated for shorter scans."""
    nz = hu.shape[0]
    frac = np.array([(hu[k] > BODY_HU).mean() for k in range(nz)])
    rows = np.nonzero(frac > 0.02)[0]
    lo, hi = (int(rows[0]), int(rows[-1])) if rows.size else (0, nz - 1)
    start = (lo + hi + 1) // 2 - n // 2
    return np.clip(np.arange(start, start + n), 0, nz - 1)


def predict_volume(hu, spacing, model=None, n_slices: int = N_SLICES, return_map: bool = False) -> dict:
    """Noise2Quality outputs of a volume from its ``n_slices`` central body slices (deterministic):
    ``mean_ssim`` (mean predicted SSIM inside the body, 1 = indistinguishable from the full dose),
    ``dose_level_pct`` (expected dose level, % of the routine full dose), ``dose_probs`` (5 levels). With
    ``return_map``, also ``map`` (the middle slice's predicted map, 256 x 256, for a report figure) and
    ``slice_index``. All None when the weights are missing or no body is found."""
    keys = ("mean_ssim", "dose_level_pct", "dose_probs")
    empty = dict.fromkeys(keys + (("map", "slice_index") if return_map else ()))
    model = model if model is not None else runtime.default_model(WEIGHTS_NAME, shipped_model)
    hu = np.asarray(hu)
    if model is None or hu.ndim != 3 or hu.shape[0] == 0:
        return empty
    zs = central_body_slices(hu, n_slices)
    prepared = [prepare_slice(np.nan_to_num(hu[k].astype(np.float32), nan=-1024.0)) for k in zs]
    w = np.stack([p[0] for p in prepared])
    body = np.stack([p[1] for p in prepared])
    if body.sum() < 50:
        return empty
    smap, probs = _run(model, w, body)
    p = probs.mean(axis=0)
    out = {"mean_ssim": float(smap[body].mean()),
           "dose_level_pct": float(np.dot(p, DOSE_LEVELS_PCT)),
           "dose_probs": [float(v) for v in p]}
    if return_map:
        mid = len(zs) // 2
        out.update(map=smap[mid], slice_index=int(zs[mid]))
    return out


def map_figure(hu, spacing, model=None):
    """A matplotlib Figure for the HTML report: the middle central body slice in the W400/L40 window next to its
    predicted SSIM map (0..1, viridis), both on the 256 x 256 grid; None when the weights are missing or no body
    is found. The map is the array :func:`predict_volume` returns with ``return_map=True``."""
    from matplotlib.figure import Figure

    pred = predict_volume(hu, spacing, model=model, return_map=True)
    if pred["map"] is None:
        return None
    w, _ = prepare_slice(np.nan_to_num(np.asarray(hu)[pred["slice_index"]].astype(np.float32), nan=-1024.0))
    fig = Figure(figsize=(9, 4.2))
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(w, cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"slice {pred['slice_index']} (W{WINDOW[1]:g}/L{WINDOW[0]:g}, 256 x 256)", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(1, 2, 2)
    im = ax.imshow(pred["map"], cmap="viridis", vmin=0, vmax=1)
    ax.set_title("Noise2Quality predicted SSIM vs. full dose", fontsize=9)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"mean SSIM in body (3 central slices) {pred['mean_ssim']:.3f}; expected dose level "
                 f"{pred['dose_level_pct']:.0f} % of full dose", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------ data
def case_params(i: int, seed0: int) -> dict:
    """Region alternating chest / head, random slice position and full-dose noise spread."""
    rng = np.random.default_rng([seed0, i])
    region = REGIONS[i % 2]
    return {"seed": int(seed0 + i), "region": region, "z_mm": float(rng.uniform(*Z_RANGE_MM[region])),
            "noise_factor": float(np.exp(rng.normal(0.0, FULL_DOSE_SPREAD)))}


def simulate_levels(p: dict, noise_stream: int = 104729) -> dict:
    """One simulated slice at full dose and at the five dose levels (HU, native 512 matrix). ``noise_stream``
    selects the noise draws (another value: the same anatomy with independent noise)."""
    from phantoms.simulate import KERNELS, REGION_DEFAULTS, image_noise_sd, shaped_noise, simulate

    region = p["region"]
    d = REGION_DEFAULTS[region]
    slice_mm = d["slice_mm"]
    ph = simulate(region, seed=p["seed"], matrix=SIM_MATRIX, z_start=p["z_mm"], z_end=p["z_mm"] + 0.5 * slice_mm,
                  noise=False)
    clean = ph.noise_free[:1].astype(np.float64)
    pixel = float(ph.truth["pixel_mm"])
    sigma_full = image_noise_sd(region, "smooth", d["mas"], slice_mm, WED_REF_MM[region], pixel) * p["noise_factor"]
    # the automatic-exposure mAs that gives this noise for this patient (metadata only)
    mas_full = d["mas"] * (image_noise_sd(region, "smooth", d["mas"], slice_mm, ph.truth["wed_mm"], pixel) / sigma_full) ** 2
    rng = np.random.default_rng([p["seed"], noise_stream])
    noise = shaped_noise((1 + len(DOSE_LEVELS_PCT),) + clean.shape[1:], KERNELS["smooth"][1], rng)
    full = clean[0] + sigma_full * noise[0]
    lows = [full + sigma_full * np.sqrt(100.0 / f - 1.0) * noise[1 + k] for k, f in enumerate(DOSE_LEVELS_PCT)]
    q = lambda a: np.clip(np.rint(a), -1024, 3071).astype(np.float32)  # noqa: E731  (12-bit scanner output)
    return {"full": q(full), "lows": [q(a) for a in lows], "sigma_full_hu": float(sigma_full),
            "mas_full": float(mas_full), "wed_mm": float(ph.truth["wed_mm"]), "pixel_mm": pixel}


def make_case(i: int, seed0: int, noise_stream: int = 104729) -> dict:
    """Training/evaluation arrays of one simulated slice: for each dose level the windowed low-dose slice, the
    true SSIM map and the body mask on the 256 grid."""
    p = case_params(i, seed0)
    s = simulate_levels(p, noise_stream)
    full_w = to_grid(window01(s["full"]))
    ws, maps, masks = [], [], []
    for low in s["lows"]:
        w, body = prepare_slice(low)
        ws.append(w)
        maps.append(ssim_map(full_w, w))
        masks.append(body)
    return {"w": np.stack(ws).astype(np.float16), "map": np.stack(maps).astype(np.float16), "body": np.stack(masks),
            "dose": np.arange(len(DOSE_LEVELS_PCT)), "region": np.full(len(DOSE_LEVELS_PCT), REGIONS.index(p["region"])),
            "seed": np.full(len(DOSE_LEVELS_PCT), p["seed"]),
            "sigma_full_hu": np.full(len(DOSE_LEVELS_PCT), s["sigma_full_hu"], np.float32)}


def _case_job(args):
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return make_case(*args)


def simulated_dataset(n: int, seed0: int, cache: Path | None = None, workers: int = 1, log=None) -> dict:
    """``n`` simulated slices x 5 dose levels as stacked arrays; cached as .npz in ``cache``."""
    from qc.safe_names import safe_child

    name = f"n2q_{int(seed0)}_{int(n)}"
    if cache is not None:
        f = safe_child(Path(cache), name, ".npz")
        if f.exists():
            return dict(np.load(f))
    t0 = time.perf_counter()
    jobs = [(i, seed0) for i in range(n)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            cases = list(ex.map(_case_job, jobs, chunksize=4))
    else:
        cases = [make_case(*j) for j in jobs]
    data = {k: np.concatenate([c[k] for c in cases]) for k in cases[0]}
    if log:
        log(f"simulated {n} slices x {len(DOSE_LEVELS_PCT)} dose levels (seeds {seed0}..{seed0 + n - 1}) "
            f"in {time.perf_counter() - t0:.0f}s")
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        np.savez_compressed(safe_child(Path(cache), name, ".npz"), **data)
    return data


# -------------------------------------------------------------------------------------------- training
def _crop_batch(data: dict, idx, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random CROP x CROP crops centred on a random body pixel (inside the slice), random left-right flips.
    Input channels are computed on the whole slice first (no filter edge at the crop border)."""
    xs, ms, bs = [], [], []
    half = CROP // 2
    for j in idx:
        w = data["w"][j].astype(np.float32)
        body = data["body"][j]
        ys, xs_ = np.nonzero(body)
        if ys.size:
            k = rng.integers(ys.size)
            cy, cx = int(ys[k]), int(xs_[k])
        else:
            cy, cx = SIZE // 2, SIZE // 2
        y0 = int(np.clip(cy - half, 0, SIZE - CROP))
        x0 = int(np.clip(cx - half, 0, SIZE - CROP))
        sl = (slice(y0, y0 + CROP), slice(x0, x0 + CROP))
        ch = input_channels(w)[(slice(None),) + sl]
        m = data["map"][j][sl].astype(np.float32)
        b = body[sl]
        if rng.random() < 0.5:
            ch, m, b = ch[..., ::-1], m[..., ::-1], b[..., ::-1]
        xs.append(ch)
        ms.append(m)
        bs.append(b)
    return (np.ascontiguousarray(np.stack(xs)), np.ascontiguousarray(np.stack(ms)),
            np.ascontiguousarray(np.stack(bs)))


def train(data: dict, *, epochs: int = 10, features=tuple(CPU_CONFIG["features"]), dropout: float = 0.0,
          norm: str = "none", lr: float = 1e-3, batch: int = 8, alpha: float = ALPHA, seed: int = 0,
          max_minutes: float | None = None, max_iters: int | None = None, log=None):
    """Train on stacked arrays (:func:`simulated_dataset`); returns (model in eval mode, info). The learning rate
    follows a cosine from ``lr`` to 0 over the planned iterations (or over ``max_minutes``, whichever ends
    first)."""
    import math

    import torch
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(features, dropout, norm)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # --full is meant for a GPU
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data["w"])
    per_epoch = max(1, n // batch)
    total = epochs * per_epoch
    if max_iters:
        total = min(total, max_iters)
    ce = nn.CrossEntropyLoss()
    t0, it, ep = time.perf_counter(), 0, 0
    hist: list[tuple[float, float]] = []
    model.train()
    stop = False
    for ep in range(epochs):
        order = rng.permutation(n)
        for b0 in range(0, per_epoch * batch, batch):
            idx = order[b0 : b0 + batch]
            x, m, body = _crop_batch(data, idx, rng)
            x, m, body = (torch.from_numpy(a).to(dev) for a in (x, m, body))
            y = torch.from_numpy(data["dose"][idx].astype(np.int64)).to(dev)
            progress = it / total
            if max_minutes:
                progress = max(progress, (time.perf_counter() - t0) / (60.0 * max_minutes))
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
            smap, logits = model(x, body)
            map_loss = ((smap - m) ** 2).mean()
            dose_loss = ce(logits, y)
            loss = map_loss + alpha * dose_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist.append((map_loss.item(), dose_loss.item()))
            it += 1
            if it >= total or (max_minutes and time.perf_counter() - t0 > 60.0 * max_minutes):
                stop = True
                break
        if log and (ep % 2 == 1 or stop or ep == epochs - 1):
            recent = np.array(hist[-per_epoch:])
            log(f"epoch {ep + 1}: map MSE {recent[:, 0].mean():.5f}, dose CE {recent[:, 1].mean():.3f} "
                f"({it} iterations, {time.perf_counter() - t0:.0f}s)")
        if stop:
            break
    model.cpu().eval()
    recent = np.array(hist[-per_epoch:]) if hist else np.zeros((1, 2))
    return model, {"iterations": it, "epochs": ep + 1, "train_s": round(time.perf_counter() - t0, 1),
                   "final_map_mse": float(recent[:, 0].mean()), "final_dose_ce": float(recent[:, 1].mean())}


def evaluate(model, data: dict, batch: int = 5) -> dict:
    """The paper's metrics on whole 256 x 256 held-out maps (mean over maps), dose-level accuracy, per level and
    per region, and the network's seconds per slice."""
    rows = []
    t_net = 0.0
    n = len(data["w"])
    for b0 in range(0, n, batch):
        sl = slice(b0, min(n, b0 + batch))
        w = data["w"][sl].astype(np.float32)
        t = time.perf_counter()
        smap, probs = _run(model, w, data["body"][sl])
        t_net += time.perf_counter() - t
        for j in range(smap.shape[0]):
            k = b0 + j
            r = map_metrics(data["map"][k].astype(np.float32), smap[j], data["body"][k])
            r.update(dose_ok=float(int(np.argmax(probs[j])) == int(data["dose"][k])), level=int(data["dose"][k]),
                     region=int(data["region"][k]), true_mean_body=float(data["map"][k][data["body"][k]].mean()),
                     pred_mean_body=float(smap[j][data["body"][k]].mean()))
            rows.append(r)
    keys = ("map_ssim", "nrmse", "nrmse_body", "rmse_body", "nrmse_minmax")

    def summary(sel):
        out = {k: float(np.mean([r[k] for r in sel if k in r])) for k in keys}
        out["dose_acc"] = float(np.mean([r["dose_ok"] for r in sel]))
        out["n"] = len(sel)
        return out

    res = summary(rows)
    res["mean_ssim_body_abs_err"] = float(np.mean([abs(r["true_mean_body"] - r["pred_mean_body"]) for r in rows]))
    res["per_level"] = {str(DOSE_LEVELS_PCT[lv]): summary([r for r in rows if r["level"] == lv])
                        for lv in range(len(DOSE_LEVELS_PCT)) if any(r["level"] == lv for r in rows)}
    res["per_region"] = {REGIONS[g]: summary([r for r in rows if r["region"] == g])
                         for g in range(len(REGIONS)) if any(r["region"] == g for r in rows)}
    res["network_s_per_slice"] = t_net / max(1, n)
    return res


def save(model, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "model": WEIGHTS_NAME})


def train_and_save(n: int = 480, epochs: int = 16, *, full: bool = False, norm: str | None = None, seed: int = 0,
                   n_heldout: int = 40, out_dir=None, cache=None, workers: int = 1, max_minutes: float | None = None,
                   max_iters: int | None = None, log=print) -> dict:
    """Simulate (or load from ``cache``) ``n`` training slices x 5 dose levels, train, measure on ``n_heldout``
    disjoint simulated slices x 5 levels, write ``noise2quality.safetensors`` into ``out_dir`` (default: the
    shipped weights folder) and register it in that folder's manifest. Returns the manifest entry."""
    from detectors import weights

    t0 = time.perf_counter()
    seed0 = TRAIN_SEED0 + 1000 * seed
    data = simulated_dataset(n, seed0, cache=cache, workers=workers, log=log)
    cfg = dict(FULL_CONFIG if full else CPU_CONFIG)
    if norm is not None:
        cfg["norm"] = norm
    model, info = train(data, epochs=epochs, features=tuple(cfg["features"]), dropout=cfg["dropout"], norm=cfg["norm"],
                        lr=cfg["lr"], batch=cfg["batch"], seed=seed, max_minutes=max_minutes, max_iters=max_iters,
                        log=log)
    metrics = {}
    if n_heldout:
        held = simulated_dataset(n_heldout, HELDOUT_SEED0, cache=cache, workers=workers, log=log)
        metrics = {"heldout": evaluate(model, held)}
        if log:
            h = metrics["heldout"]
            log("held-out: " + ", ".join(f"{k} {h[k]:.4g}" for k in ("n", "map_ssim", "nrmse", "nrmse_body", "rmse_body",
                                                                        "dose_acc", "network_s_per_slice")))
    out = Path(out_dir) if out_dir is not None else weights.WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / "noise2quality.safetensors"
    save(model, path)
    cmd = (f"qc train n2q --n {n} --epochs {epochs} --seed {seed}" + (" --full" if full else "")
           + (f" --norm {norm}" if norm else "") + (f" --max-minutes {max_minutes}" if max_minutes else "")
           + (f" --max-iters {max_iters}" if max_iters else ""))
    return weights.register(WEIGHTS_NAME, path, {
        "kind": "2-D U-Net (MONAI BasicUNet) + dose head (safetensors)", "version": "noise2quality-1",
        "architecture": {**cfg, "input": "2 x 256 x 256 (window W400/L40 -> [-1, 1]; 10 (w - G_1.1 w))",
                         "train_crop": CROP, "output": "tanh SSIM map 256 x 256; 5 dose logits (5/10/25/50/75 %)",
                         "dose_head": "body-masked average of the bottleneck, 1 linear layer", "alpha": ALPHA,
                         "loss": "MSE(map) + alpha CE(dose)",
                         "ssim": "skimage structural_similarity, data_range 1 (W400 HU), 11 x 11 Gaussian sigma 1.5"},
        "training_data": (f"phantoms.simulate image mode, {n} slices (chest/head alternating, smooth kernel, 512 matrix, "
                          f"random z, seeds {seed0}+i) x 5 dose levels by NPS-shaped noise insertion; full dose = "
                          f"AEC-like reference noise x lognormal({FULL_DOSE_SPREAD})"),
        "heldout_data": (f"{n_heldout} simulated slices x 5 dose levels, seeds {HELDOUT_SEED0}+i (disjoint), same design"
                         if n_heldout else None),
        "metric_definitions": {"map_ssim": "skimage SSIM(true, pred, data_range=2), 7x7 uniform window",
                               "nrmse": "||true - pred||_2 / ||true||_2 over the whole 256 x 256 map",
                               "nrmse_body": "the same inside the body mask", "rmse_body": "RMSE inside the body",
                               "nrmse_minmax": "RMSE / (max - min of the true map)",
                               "dose_acc": "5-class accuracy of the dose head"},
        "command": cmd, "training": info, "metrics": metrics, "seconds": round(time.perf_counter() - t0, 1),
        "reference": "Haque, Wang, Imran: Noise2Quality, SPIE Medical Imaging 2022 (12035); paper SSIM 0.7664, "
                     "NRMSE 0.2437; deviations: detectors/noise2quality.py",
    }, manifest=out / "manifest.json")
