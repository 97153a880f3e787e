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


@train_app.command("seg")
def train_seg(
    region: str = typer.Option(..., "--region", help="head or chest."),
    iterations: int = typer.Option(2000, "--iterations", min=1, help="Training iterations (batches of 2 patches)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first simulated training case and of the training run."),
    n_train: int = typer.Option(32, "--n-train", min=1, help="Simulated training scans."),
    n_eval: int = typer.Option(8, "--n-eval", min=0, help="Held-out simulated scans for the manifest's Dice."),
    max_minutes: Optional[float] = typer.Option(14.0, "--max-minutes", help="Stop training after this long (CPU)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Weights folder (default: the shipped detectors/weights)."),
):
    """Compact MONAI 3-D UNet segmentation for one region (detectors/segmentation.py), with held-out Dice."""
    from detectors import segmentation
    from qc.errors import QCInputError

    if region not in segmentation.REGION_CLASSES:
        raise typer.BadParameter("--region must be head or chest")
    try:
        entry = segmentation.train_and_save(region, iterations=iterations, seed=seed, out_dir=out, n_train=n_train,
                                            n_eval=n_eval, max_minutes=max_minutes, log=typer.echo)
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
    epochs: int = typer.Option(120, "--epochs", min=1, help="Passes over the training set."),
    full: bool = typer.Option(False, "--full", help="Paper widths 64-128-256-512-512, lr 1e-4, batch 1 (GPU)."),
    scalars: bool = typer.Option(True, "--scalars/--no-scalars",
                                 help="Give the heads ln WED, ln pixel, ln slice (documented deviation)."),
    batch_norm: bool = typer.Option(False, "--batch-norm", help="The paper's batch norm in the backbone (off: it "
                                    "rescales each batch's noise; see detectors/chest_iqa.py)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of scans + labels.csv (file,window,dose,snr,brisque)."),
    n_heldout: int = typer.Option(60, "--n-heldout", min=0, help="Held-out simulated slabs measured into the manifest."),
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


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
