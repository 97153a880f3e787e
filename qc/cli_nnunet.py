"""Export commands. `qc export-nnunet`: write simulated, labelled scans as an nnU-Net v2 raw dataset
(detectors/nnunet_backend.py). `qc export-onnx`: the shipped torch networks as the ONNX files assessment runs
(detectors/export_onnx.py).

Thin: parse the options, call the detectors function, print where it went. Heavy imports happen inside the
commands so that `qc --help` stays instant.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from qc.cli_util import input_errors_exit_2


class ExportRegion(str, Enum):
    head = "head"
    chest = "chest"


@input_errors_exit_2
def export_nnunet(
    out: Path = typer.Option(..., "--out", help="nnU-Net raw folder (nnUNet_raw); the dataset goes into DatasetXXX_CTQC<Region>."),
    region: ExportRegion = typer.Option(..., "--region", help="head or chest (the label set of the MONAI segmenter)."),
    n: int = typer.Option(..., "--n", min=1, help="Number of simulated cases."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first case (case i is seed + i)."),
    matrix: int = typer.Option(256, "--matrix", min=32, max=512, help="In-plane matrix of the simulated scans."),
    dataset_id: Optional[int] = typer.Option(None, "--dataset-id", min=1, max=999,
                                             help="nnU-Net dataset ID (default 901 head, 902 chest)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the cases of an existing dataset folder."),
):
    """Export simulated scans + labels as an nnU-Net v2 raw dataset (train it with nnUNetv2_plan_and_preprocess / nnUNetv2_train)."""
    from detectors import nnunet_backend

    root = nnunet_backend.export_dataset(out, region.value, n, seed=seed, matrix=matrix, dataset_id=dataset_id,
                                         overwrite=overwrite, log=typer.echo)
    did = int(root.name[len("Dataset"):len("Dataset") + 3])
    typer.echo(f"dataset: {root}")
    typer.echo(f"train:   export nnUNet_raw={root.parent} nnUNet_preprocessed=... nnUNet_results=...; "
               f"nnUNetv2_plan_and_preprocess -d {did} --verify_dataset_integrity; nnUNetv2_train {did} 3d_fullres 0")
    typer.echo(f"run:     qc assess SCAN --segmenter nnunet:$nnUNet_results/{root.name}/"
               "nnUNetTrainer__nnUNetPlans__3d_fullres")


@input_errors_exit_2
def export_onnx(
    names: Optional[list[str]] = typer.Argument(None, help="Networks to export (default: all shipped ones: seg_head, "
                                                "seg_chest, yolo_head, yolo_chest, yolo_artifacts(_b), chest_iqa, "
                                                "noise2quality, tfkt)."),
):
    """Export the shipped torch networks to ONNX (run after `qc train ...`): checked against torch, sha256-listed."""
    from detectors import export_onnx as ex

    ex.export_all(tuple(names) if names else ex.NAMES, log=typer.echo)


def register(app: typer.Typer) -> None:
    app.command("export-nnunet")(export_nnunet)
    app.command("export-onnx")(export_onnx)
