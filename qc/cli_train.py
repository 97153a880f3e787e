"""`qc train ...`: train the small shipped models on simulated data (CPU), write their weights under
``detectors/weights/`` (or ``--out``) and record them in the weights manifest (sha256, data, metrics).

Each subcommand is thin: it calls one training function in :mod:`detectors` and prints what it measured.
Heavy imports (torch, MONAI) happen inside the commands so that `qc --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

train_app = typer.Typer(no_args_is_help=True, help="Train the shipped detectors on simulated data (CPU).")


@train_app.command("classifiers")
def train_classifiers(
    n: int = typer.Option(240, "--n", min=8, help="Simulated chest cases per task (half held out for testing)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first simulated case."),
    out: Optional[Path] = typer.Option(None, "--out", help="Weights folder (default: the shipped detectors/weights)."),
):
    """Kernel (soft-tissue vs sharp) and dose-level (30 vs 50 mAs; 5 dose fractions) classifiers on IQM features."""
    from detectors import classifiers

    report = classifiers.train_and_save(n=n, seed=seed, out_dir=out)
    for task, m in report.items():
        typer.echo(f"{task}: held-out accuracy {m['test_accuracy']:.3f} (n_test={m['n_test']}), "
                   f"log-loss {m['test_log_loss']:.3f}")


@train_app.command("region")
def train_region(
    n: int = typer.Option(180, "--n", min=6, help="Simulated training scans (cycling head / chest / other)."),
    n_test: int = typer.Option(90, "--n-test", min=3, help="Held-out simulated scans for the manifest's metrics."),
    seed: int = typer.Option(0, "--seed", help="Training seed (simulated seeds shift by 1000 per seed)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Weights folder (default: the shipped detectors/weights)."),
):
    """Body-region classifier (head / chest / other): logistic regression on mask features (detectors/region.py)."""
    from detectors import region

    entry = region.train_and_save(n=n, n_test=n_test, seed=seed, out_dir=out, log=typer.echo)
    typer.echo(f"{entry['file']}: sha256 {entry['sha256'][:12]}…")


@train_app.command("seg")
def train_seg(
    region: str = typer.Option(..., "--region", help="head or chest."),
    iterations: int = typer.Option(2000, "--iterations", min=1, help="Training iterations (batches of 2 patches)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first simulated training case and of the training run."),
    n_train: int = typer.Option(32, "--n-train", min=1, help="Simulated training scans."),
    n_eval: int = typer.Option(8, "--n-eval", min=0, help="Held-out simulated scans for the manifest's Dice."),
    max_minutes: Optional[float] = typer.Option(14.0, "--max-minutes", help="Stop training after this long (CPU)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Weights folder (default: the shipped detectors/weights)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from these safetensors weights "
                                             "(same architecture): fine-tuning."),
    lr: float = typer.Option(3e-3, "--lr", min=1e-6, help="Adam learning rate at the start of the cosine schedule."),
):
    """Compact MONAI 3-D UNet segmentation for one region (detectors/segmentation.py), with held-out Dice."""
    from detectors import segmentation
    from qc.errors import QCInputError

    if region not in segmentation.REGION_CLASSES:
        raise typer.BadParameter("--region must be head or chest")
    try:
        entry = segmentation.train_and_save(region, iterations=iterations, seed=seed, out_dir=out, n_train=n_train,
                                            n_eval=n_eval, max_minutes=max_minutes, log=typer.echo,
                                            init_from=init_from, lr=lr)
    except QCInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{entry['file']}: {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}…, "
               f"{entry['training']['iterations']} iterations in {entry['training']['train_s']:.0f}s")
    held = entry["metrics"]["heldout"]
    for name, m in held.get("network", {}).items():
        cl = held.get("classical", {}).get(name)
        typer.echo(f"  {name:18s} Dice {m['mean']:.3f} (min {m['min']:.3f}, n={m['n']})"
                   + (f"   classical {cl['mean']:.3f}" if cl else ""))


@train_app.command("chest-iqa")
def train_chest_iqa(
    n: int = typer.Option(480, "--n", min=4, help="Simulated training chest slabs (ignored with --data)."),
    epochs: int = typer.Option(50, "--epochs", min=1, help="Passes over the training set."),
    full: bool = typer.Option(False, "--full", help="Paper widths 64-128-256-512-512, lr 1e-4, batch 1 (GPU)."),
    scalars: bool = typer.Option(True, "--scalars/--no-scalars",
                                 help="Give the heads ln WED, ln pixel, ln slice (documented deviation)."),
    batch_norm: bool = typer.Option(False, "--batch-norm", help="The paper's batch norm in the backbone (off: it "
                                    "rescales each batch's noise; see detectors/chest_iqa.py)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of scans + labels.csv (file,window,dose,snr,brisque)."),
    n_heldout: int = typer.Option(200, "--n-heldout", min=0, help="Held-out simulated slabs measured into the manifest."),
    seed: int = typer.Option(0, "--seed", help="Training seed (simulated training seeds shift by 1000 per seed)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes simulating the data."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder caching the simulated crops (.npz)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop training after this long."),
    max_iters: Optional[int] = typer.Option(None, "--max-iters", help="Stop training after this many batches."),
    out: Optional[Path] = typer.Option(None, "--out", help="Weights folder (default: the shipped detectors/weights)."),
):
    """Chest CT-IQA 3-D VGG (Xun et al.): window, dose, SNR and BRISQUE heads (detectors/chest_iqa.py)."""
    from detectors import chest_iqa
    from qc.errors import QCInputError

    try:
        entry = chest_iqa.train_and_save(n=n, epochs=epochs, full=full, scalars=scalars, batch_norm=batch_norm,
                                         out_dir=out, data_dir=data,
                                         n_heldout=n_heldout, cache=cache, seed=seed, workers=workers,
                                         max_minutes=max_minutes, max_iters=max_iters, log=typer.echo)
    except QCInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{entry['file']}: {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}…, "
               f"{entry['training']['iterations']} iterations in {entry['training']['train_s']:.0f}s")


@train_app.command("perceptual")
def train_perceptual(
    data: Optional[Path] = typer.Option(None, "--data", help="LDCTIQA-format folder: 512x512 [0,1] TIFF slices + "
                                        "scores.json or a CSV file,score (default: build a simulated set)."),
    epochs: int = typer.Option(12, "--epochs", min=1, help="Fine-tuning passes over the scored slices."),
    pretrain_epochs: int = typer.Option(5, "--pretrain-epochs", min=0, help="Distortion pretraining passes "
                                        "(24 crops per base slice each; 0 = no pretraining)."),
    n_bases: int = typer.Option(64, "--n-bases", min=1, help="Noise-free simulated slices (pretraining; x6 "
                                "distortions = the simulated fine-tuning set without --data)."),
    n_heldout_bases: int = typer.Option(20, "--n-heldout-bases", min=0, help="Disjoint simulated slices x6 measured "
                                        "into the manifest (without --data)."),
    full: bool = typer.Option(False, "--full", help="ResNet-18 widths 64-512, 256-wide tokens, 4 layers (GPU)."),
    real: bool = typer.Option(True, "--real/--no-real", help="Add the shared real slices to the pretraining bases."),
    seed: int = typer.Option(0, "--seed", help="Training seed (simulated training seeds shift by 1000 per seed)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes simulating the base slices."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder keeping the simulated LDCTIQA sets (TIFF + CSV)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Training time cap (30 % pretraining)."),
    max_iters: Optional[int] = typer.Option(None, "--max-iters", help="Cap on fine-tuning batches."),
    pretrain_max_iters: Optional[int] = typer.Option(None, "--pretrain-max-iters", help="Cap on pretraining batches."),
    out: Optional[Path] = typer.Option(None, "--out", help="Weights folder (default: the shipped detectors/weights)."),
):
    """TFKT perceptual quality (Rifa et al.): CNN + transformer slice score 0-4, LDCTIQA challenge metric
    (detectors/tfkt.py)."""
    from detectors import tfkt
    from qc.errors import QCInputError

    try:
        entry = tfkt.train_and_save(data_dir=data, n_bases=n_bases, n_heldout_bases=n_heldout_bases, epochs=epochs,
                                    pretrain_epochs=pretrain_epochs, full=full, seed=seed, workers=workers, cache=cache,
                                    out_dir=out, max_minutes=max_minutes, max_iters=max_iters,
                                    pretrain_max_iters=pretrain_max_iters, real_pretrain=real, log=typer.echo)
    except QCInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{entry['file']}: {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}…, "
               f"{entry['training']['iterations']} fine-tuning batches in {entry['training']['train_s']:.0f}s")


@train_app.command("n2q")
def train_n2q(
    n: int = typer.Option(480, "--n", min=2, help="Simulated training slices (chest/head alternating), x 5 dose levels."),
    epochs: int = typer.Option(16, "--epochs", min=1, help="Passes over the training set (96 x 96 crops)."),
    seed: int = typer.Option(0, "--seed", help="Training seed (simulated training seeds shift by 1000 per seed)."),
    full: bool = typer.Option(False, "--full", help="Paper widths 16-256, instance norm, dropout 0.25, lr 2e-4, batch 16 (GPU)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="'none' or 'instance' (default: none on CPU, instance with --full)."),
    n_heldout: int = typer.Option(40, "--n-heldout", min=0, help="Held-out simulated slices (x 5 levels) measured into the manifest."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes simulating the data."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder caching the simulated slices (.npz)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop training after this long."),
    max_iters: Optional[int] = typer.Option(None, "--max-iters", help="Stop training after this many batches."),
    out: Optional[Path] = typer.Option(None, "--out", help="Weights folder (default: the shipped detectors/weights)."),
):
    """Noise2Quality (Haque et al.): U-Net predicting the SSIM map vs. full dose + 5-level dose head
    (detectors/noise2quality.py)."""
    from detectors import noise2quality

    if norm is not None and norm not in ("none", "instance"):
        raise typer.BadParameter("--norm must be none or instance")
    entry = noise2quality.train_and_save(n=n, epochs=epochs, full=full, norm=norm, seed=seed, n_heldout=n_heldout,
                                         out_dir=out, cache=cache, workers=workers, max_minutes=max_minutes,
                                         max_iters=max_iters, log=typer.echo)
    typer.echo(f"{entry['file']}: {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}…, "
               f"{entry['training']['iterations']} iterations in {entry['training']['train_s']:.0f}s")


@train_app.command("det")
def train_det(
    region: str = typer.Option(..., "--region",
                               help="head or chest (landmarks), or artifacts / artifacts_b (axial slices of both "
                                    "regions: the two members of the artifact ensemble; train them with different "
                                    "--seed)."),
    n_train: Optional[int] = typer.Option(None, "--n-train", min=1, help="Simulated volumes (landmarks, default "
                                          "160) or slices per region (artifacts, default 120)."),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Passes over the training images."),
    batch: int = typer.Option(8, "--batch", min=2, help="Images per optimizer step."),
    seed: int = typer.Option(0, "--seed", help="Training seed (simulated seeds shift by 1000 per seed)."),
    n_heldout: Optional[int] = typer.Option(None, "--n-heldout", min=0, help="Held-out volumes (landmarks, default "
                                            "30) or scans per kind and region (artifacts, default 10)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes simulating the data."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder caching the simulated images (.npz)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="ultralytics time limit (minutes)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Weights folder (default: the shipped detectors/weights)."),
):
    """YOLO (ultralytics yolo11n, offline) landmark or artifact detector (detectors/yolo_detect.py)."""
    from detectors import yolo_detect
    from qc.errors import QCInputError

    if region not in yolo_detect.MODELS:
        raise typer.BadParameter(f"--region must be one of {', '.join(yolo_detect.MODELS)}")
    try:
        entry = yolo_detect.train_and_save(region, n_train=n_train, epochs=epochs, batch=batch, seed=seed,
                                           n_heldout=n_heldout, max_minutes=max_minutes, out_dir=out, cache=cache,
                                           workers=workers, log=typer.echo)
    except QCInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{entry['file']}: {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}…, "
               f"{entry['training']['epochs']} epochs in {entry['training']['train_s']:.0f}s")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
