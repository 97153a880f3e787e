"""`qc` command line. Thin: parse arguments, call the pure functions, print. Heavy imports happen inside
the commands so that `qc --help` stays instant.

Exit codes: 0 ok, 2 bad input (one-line message naming the file and reason), 1 internal error.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from qc.cli_util import input_errors_exit_2 as _input_errors_exit_2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="CT quality control: is this head or chest CT good enough, and if not, why?",
    pretty_exceptions_enable=False,
)


class RegionOpt(str, Enum):
    auto = "auto"
    head = "head"
    chest = "chest"


class SimRegion(str, Enum):
    head = "head"
    chest = "chest"


class Kernel(str, Enum):
    smooth = "smooth"
    sharp = "sharp"


def _version_cb(value: bool):
    if value:
        from qc import __version__

        typer.echo(f"qc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                       help="Print the version and exit.")):
    """CT quality control engine."""


def _write_text(path: Path, text: str) -> None:
    from qc.errors import QCInputError

    if str(path) == "-":
        sys.stdout.write(text)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise QCInputError(f"cannot write output: {exc.strerror}", path) from None


@app.command()
@_input_errors_exit_2
def assess(
    path: Path = typer.Argument(..., help="CT scan: NIfTI/NRRD/MHA file, DICOM file or DICOM folder."),
    explain: bool = typer.Option(False, "--explain", help="Print the tree overall <- categories <- IQMs."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full result as JSON ('-' = stdout)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write one CSV row (scores + IQMs)."),
    region: RegionOpt = typer.Option(RegionOpt.auto, "--region", help="Body region; auto = heuristic."),
    config: Optional[Path] = typer.Option(None, "--config", help="Hierarchy YAML (default: shipped rubric)."),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID to assess in a DICOM folder."),
    model: Optional[Path] = typer.Option(None, "--model", help="Fitted model JSON from `qc fit` (default: rubric)."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report (views, masks, explain tree)."),
    segmenter: str = typer.Option("auto", "--segmenter", help="auto (default: monai when its ONNX export verifies, else "
                                  "classical), classical (HU + morphology), monai (shipped network), "
                                  "nnunet:MODEL_DIR (your trained nnU-Net v2 model folder; weights loaded as data, "
                                  "plans must name dynamic_network_architectures) or totalsegmentator (its weights, "
                                  "only if already on disk; never downloaded). See README 'Segmentation backends'."),
    networks: bool = typer.Option(True, "--networks/--no-networks",
                                  help="Run the shipped learned networks and detectors (Chest CT-IQA, TFKT, Noise2Quality, "
                                       "YOLO landmarks and artifacts) through ONNX Runtime (no torch import). "
                                       "--no-networks: their IQMs are not measured."),
):
    """Assess one CT scan and print its scores."""
    import json

    from qc.pipeline import assess as run_assess
    from qc.report import print_explain, print_summary

    result = run_assess(path, region=region.value, config=config, series_uid=series, model=model, segmenter=segmenter,
                        networks=networks)
    if html_out is not None:
        from qc.html_report import add_html

        add_html(result, path, html_out, series_uid=series)
    if json_out is not None:
        _write_text(json_out, json.dumps(result.to_json_dict(), indent=2, default=str) + "\n")
    if csv_out is not None:
        import pandas as pd

        _write_text(csv_out, pd.DataFrame([result.to_row()]).to_csv(index=False))
    if json_out is not None and str(json_out) == "-":
        return
    if explain:
        print_explain(result)
    else:
        print_summary(result)


@app.command()
@_input_errors_exit_2
def demo(out: Path = typer.Option(Path("qc_demo_out"), "--out", help="Folder for the simulated scans."),
         seed: int = typer.Option(0, "--seed")):
    """Simulate a head (DICOM series) and a chest (NIfTI) scan and assess both with --explain."""
    from phantoms import simulate, write_phantom
    from qc.pipeline import assess as run_assess
    from qc.report import print_explain

    head = write_phantom(simulate("head", seed=seed), out / "head", dicom=True)
    chest = write_phantom(simulate("chest", seed=seed, shift_y=25.0, z_end=70.0), out / "chest")
    for label, path in (("head (DICOM series)", head["dicom"]), ("chest (NIfTI, table 25 mm low, apices cut)", chest["scan"])):
        typer.echo(f"\n=== demo {label}: {path}")
        print_explain(run_assess(path))


class SimWhat(str, Enum):
    head = "head"
    chest = "chest"
    dataset = "dataset"


class SimMode(str, Enum):
    image = "image"
    projection = "projection"


@app.command()
@_input_errors_exit_2
def simulate(
    what: SimWhat = typer.Argument(..., help="head, chest, or dataset (a varied set with manifest.csv)"),
    out: Path = typer.Option(..., "--out", help="Output folder (scan.nii.gz, labels.nii.gz, truth.json)."),
    mas: Optional[float] = typer.Option(None, "--mas", help="Tube current-time product (default 400 head, 100 chest)."),
    dose_fraction: float = typer.Option(1.0, "--dose-fraction", help="Dose level as a fraction of --mas (0-1]."),
    kernel: Kernel = typer.Option(Kernel.smooth, "--kernel"),
    shift_x: float = typer.Option(0.0, "--shift-x", help="Lateral off-centre shift, mm (+ = patient left)."),
    shift_y: float = typer.Option(0.0, "--shift-y", help="Vertical shift, mm (+ = posterior: table too low, supine)."),
    yaw: float = typer.Option(0.0, "--yaw", help="Head yaw, degrees."),
    roll: float = typer.Option(0.0, "--roll", help="Head roll, degrees."),
    pitch: float = typer.Option(0.0, "--pitch", help="Head pitch, degrees (+ = chin down)."),
    z_start: Optional[float] = typer.Option(None, "--z-start", help="Scan range start, mm (head centre/carina = 0)."),
    z_end: Optional[float] = typer.Option(None, "--z-end", help="Scan range end, mm."),
    slice_mm: Optional[float] = typer.Option(None, "--slice-mm", help="Slice thickness = spacing, mm."),
    artifact: Optional[list[str]] = typer.Option(None, "--artifact", help="NAME[:SEVERITY], repeatable: metal, beam_hardening, ring, motion, truncation."),
    mode: SimMode = typer.Option(SimMode.image, "--mode", help="image (fast, NPS-shaped noise) or projection (radon/Poisson/FBP)."),
    seed: int = typer.Option(0, "--seed"),
    matrix: int = typer.Option(256, "--matrix", help="256 or 512 (128 for quick tests)."),
    dicom: bool = typer.Option(False, "--dicom", help="Also write a DICOM series in OUT/dicom."),
    n: int = typer.Option(10, "--n", help="dataset: number of scans."),
    region: str = typer.Option("mixed", "--region", help="dataset: head, chest or mixed."),
    artifact_prob: float = typer.Option(0.3, "--artifact-prob", help="dataset: probability of one random artifact per scan."),
):
    """Simulate a head or chest CT with ground truth, or a varied dataset with manifest.csv."""
    from phantoms import simulate as sim
    from phantoms import write_phantom
    from phantoms.dataset import make_dataset
    from phantoms.simulate import parse_artifacts
    from qc.errors import QCInputError

    if matrix not in (128, 256, 512):
        raise QCInputError("--matrix must be 128, 256 or 512")
    try:
        if what == SimWhat.dataset:
            if region not in ("head", "chest", "mixed"):
                raise ValueError("--region for a dataset must be head, chest or mixed")
            manifest = make_dataset(out, n=n, region=region, seed=seed, matrix=matrix, mode=mode.value,
                                    artifact_prob=artifact_prob, dicom=dicom)
            typer.echo(f"manifest: {manifest}")
            return
        ph = sim(what.value, seed=seed, mas=mas, dose_fraction=dose_fraction, kernel=kernel.value, shift_x=shift_x,
                 shift_y=shift_y, yaw=yaw, roll=roll, pitch=pitch, z_start=z_start, z_end=z_end, matrix=matrix,
                 slice_mm=slice_mm, mode=mode.value, artifacts=parse_artifacts(artifact))
    except ValueError as exc:
        raise QCInputError(str(exc)) from None
    paths = write_phantom(ph, out, dicom=dicom)
    for k, p in paths.items():
        typer.echo(f"{k}: {p}")


@app.command()
@_input_errors_exit_2
def fit(
    iqms_csv: Path = typer.Option(..., "--iqms", help="CSV: scan_id + one column per IQM."),
    ratings_csv: Path = typer.Option(..., "--ratings", help="CSV: scan_id, optional reader, one column per category, overall."),
    out: Path = typer.Option(..., "--out", help="Model JSON to write."),
    config: Optional[Path] = typer.Option(None, "--config", help="Hierarchy YAML or region name (default: region of --region)."),
    region: SimRegion = typer.Option(SimRegion.head, "--region", help="Region whose shipped config is used."),
    formula: Optional[str] = typer.Option(None, "--formula", help='Free statsmodels formula, e.g. "score ~ window + dose + snr + brisque".'),
):
    """Fit the hierarchy (statsmodels OLS) on local ratings; print coefficients and write diagnostic plots."""
    import json

    from rich.console import Console
    from rich.table import Table

    from qc.config import load_config
    from regression.fit import _read_csv, diagnostic_plots, fit_formula, fit_hierarchy, save_model

    iq = _read_csv(iqms_csv, "IQM table")
    ra = _read_csv(ratings_csv, "ratings")
    console = Console(width=160)
    if formula:
        table = iq.merge(ra.groupby("scan_id", sort=False).mean(numeric_only=True).reset_index(), on="scan_id")
        res = fit_formula(table, formula)
        _write_text(out, json.dumps(res, indent=1) + "\n")
        console.print(f"{formula}: n={res['n']} R2={res['r2']:.3f} PLCC={res['plcc']:.4f} SRCC={res['srcc']:.4f} RMSE={res['rmse']:.4f}")
        for k, c in res["coefficients"].items():
            console.print(f"  {k:<20} {c['estimate']:+.4f}  [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]  p={c['p_value']:.3g}")
        return
    cfg = load_config(str(config) if config is not None else region.value)
    model, warnings = fit_hierarchy(iq, ra, cfg, {"iqms_file": iqms_csv.name, "ratings_file": ratings_csv.name,
                                                   "config": str(config or f"{cfg.region}_ct.yaml")})
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, out)
        plots = diagnostic_plots(model, out.with_name(out.stem + "_diagnostics"))
    except OSError as exc:
        from qc.errors import QCInputError

        raise QCInputError(f"cannot write output: {exc.strerror}", out) from None
    table = Table(title=f"fitted on {model['provenance']['n_scans']} scans, {model['provenance']['n_readers']} reader(s)")
    for col in ("model", "term", "estimate", "std err", "95% CI", "p", "VIF"):
        table.add_column(col)
    for name, part in list(model["categories"].items()) + [("overall", model["overall"])]:
        ic = part["intercept"]
        table.add_row(name, "intercept", f"{ic['estimate']:+.3f}", f"{ic['std_err']:.3f}",
                      f"[{ic['ci_low']:+.3f}, {ic['ci_high']:+.3f}]", f"{ic['p_value']:.3g}", "")
        for term, c in part["coefficients"].items():
            table.add_row("", term, f"{c['estimate']:+.3f}", f"{c['std_err']:.3f}", f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
                          f"{c['p_value']:.3g}", f"{part['vif'][term]:.1f}")
        table.add_row("", f"R2 {part['r2']:.3f} (adj {part['r2_adj']:.3f}), n {part['n']}, dropped {part['dropped']}", "", "", "", "", "")
    console.print(table)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"model: {out}; diagnostics: {', '.join(p.name for p in plots)}")


@app.command()
@_input_errors_exit_2
def validate(
    pred_csv: Path = typer.Option(..., "--pred", help="CSV: scan_id + predicted scores (category names or score_<category>, overall)."),
    ratings_csv: Path = typer.Option(..., "--ratings", help="CSV: scan_id, optional reader, rated scores."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for validation.csv/json and Bland-Altman plots."),
):
    """Agreement of predicted scores with ratings: ICC(2,1)/(3,1), MAD, MAPE, t-test, Bland-Altman, PLCC/SRCC/KRCC, RMSE."""
    import json

    from rich.console import Console
    from rich.table import Table

    from regression.fit import _read_csv
    from regression.validate import bland_altman_plots
    from regression.validate import validate as run_validate

    pred = _read_csv(pred_csv, "predictions")
    ra = _read_csv(ratings_csv, "ratings")
    table, inter = run_validate(pred, ra)
    cols = ["score", "n", "icc2_1", "icc3_1", "mad", "mape_pct", "paired_t_p", "bias", "loa_low", "loa_high",
            "plcc", "srcc", "krcc", "rmse", "ldctiqa_score"]
    t = Table()
    for c in cols:
        t.add_column(c)
    for _, row in table.iterrows():
        t.add_row(*[str(row[c]) if c in ("score", "n") else f"{row[c]:.3f}" for c in cols])
    Console(width=200).print(t)
    if inter:
        Console(width=200).print("inter-reader ICC: " + json.dumps(inter))
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            table.to_csv(out / "validation.csv", index=False)
            (out / "validation.json").write_text(json.dumps({"agreement": table.to_dict(orient="records"),
                                                             "inter_reader_icc": inter}, indent=1, default=float))
            bland_altman_plots(pred, ra, table, out)
        except OSError as exc:
            from qc.errors import QCInputError

            raise QCInputError(f"cannot write output: {exc.strerror}", out) from None


@app.command()
def iqms(markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (for the docs).")):
    """List every registered IQM with unit, direction, regions, formula and reference."""
    from metrics.registry import get_registry

    reg = get_registry()
    if markdown:
        typer.echo("| IQM | unit | direction | regions | formula | reference |")
        typer.echo("|---|---|---|---|---|---|")
        for n, sp in reg.items():
            typer.echo(f"| `{n}` | {sp.unit} | {sp.direction} | {', '.join(sp.regions)} | {sp.formula} | {sp.reference} |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=True)
    for col in ("IQM", "unit", "direction", "regions", "description"):
        table.add_column(col)
    for n, sp in reg.items():
        table.add_row(n, sp.unit, sp.direction, ",".join(sp.regions), sp.description)
    Console(width=160).print(table)


def _register_audit_commands() -> None:
    from qc.cli_audit import register

    register(app)


_register_audit_commands()


def _register_train_commands() -> None:
    from qc.cli_train import register

    register(app)


_register_train_commands()


def _register_nnunet_commands() -> None:
    from qc.cli_nnunet import register

    register(app)


_register_nnunet_commands()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: maps our documented errors to exit code 2, anything else to 1."""
    from qc.errors import QCInputError

    try:
        # with standalone_mode=False click returns the code of a typer.Exit instead of raising it
        rv = app(args=argv, standalone_mode=False)
    except QCInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        # click usage errors (typer >= 0.2x vendors click as typer._click): print usage, exit 2
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        typer.echo(f"internal error ({type(exc).__name__}): {exc}. Please report it with the command you ran.", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
