"""`qc audit`, `qc export`, `qc report`: the protocol-audit commands, registered on the main typer app by
:func:`register`. Heavy libraries (dask, duckdb, pandas, matplotlib) are imported inside the commands so
that `qc --help` stays instant.

    qc audit INPUT... --out STORE.duckdb [--workers N] [--scheduler tcp://HOST:PORT] [--model MODEL.json]
             [--id-salt S] [--keep-phi] [--paths absolute|relative|hashed] [--retry-errors] [--quiet]
    qc export STORE --format csv|parquet|xlsx --by scan|protocol|scanner|month --out FILE
    qc report STORE --out report.html [--scan KEY [--root DIR]]

Exit codes (as every `qc` command): 0 when the run completed - for `qc audit` also when some inputs failed or
were refused, since each one is recorded in the store's ``errors`` table with its reason and counted in the
summary line; 2 for unusable arguments (missing input, unreadable manifest, a store in use or written with
another ``--paths`` mode, an unwritable output), with one line on stderr; 130 when interrupted (finished scans
are stored; the same command continues); 1 for an internal error.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer


class ExportFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"
    xlsx = "xlsx"


class PathMode(str, Enum):
    absolute = "absolute"
    relative = "relative"
    hashed = "hashed"


class ExportBy(str, Enum):
    scan = "scan"
    protocol = "protocol"
    scanner = "scanner"
    month = "month"


def audit(
    inputs: list[Path] = typer.Argument(..., help="Folders (searched recursively), manifest CSVs (`path` column) or files."),
    out: Path = typer.Option(..., "--out", help="DuckDB store to create or extend (e.g. audit.duckdb)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Local Dask worker processes (default: CPU cores)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Use a running Dask cluster, e.g. tcp://host:8786."),
    model: Optional[Path] = typer.Option(None, "--model", help="Fitted model JSON from `qc fit` (default: the rubric)."),
    id_salt: str = typer.Option("ctqc-audit-v1", "--id-salt", help="Salt of the patient/study id hashes (use a site secret)."),
    keep_phi: bool = typer.Option(False, "--keep-phi", help="Also store PatientID, StudyInstanceUID, AccessionNumber in clear."),
    paths: PathMode = typer.Option(PathMode.absolute, "--paths", help="How input locations are stored and logged: "
                                   "absolute, relative (to the input given) or hashed (salted hash; no folder names)."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Assess again the inputs that failed in earlier runs."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output, only the summary line."),
):
    """Assess every CT in folders or a manifest on Dask, scan by scan into a DuckDB store (re-runs skip done scans).
    Exit code 0 also when some inputs fail: each is recorded in the store with its reason."""
    from qc.audit import run_audit

    summary = run_audit(inputs, out, workers=workers, scheduler=scheduler, model=model, id_salt=id_salt,
                        keep_phi=keep_phi, retry_errors=retry_errors, progress=not quiet, paths=paths.value)
    if summary.dropped_columns:
        typer.echo(f"manifest columns not stored (patient identifiers): {', '.join(summary.dropped_columns)}", err=True)
    typer.echo(summary.line())
    if summary.interrupted:
        typer.echo("interrupted: finished scans are stored; run the same command again to continue", err=True)
        raise typer.Exit(130)


def export(
    store: Path = typer.Argument(..., help="Audit store written by `qc audit`."),
    fmt: ExportFormat = typer.Option(ExportFormat.csv, "--format", help="csv, parquet or xlsx."),
    by: ExportBy = typer.Option(ExportBy.scan, "--by", help="One row per scan, or aggregates per protocol/scanner/month."),
    out: Path = typer.Option(..., "--out", help="File to write."),
):
    """Export the store: per scan (scores, IQM values, statuses) or aggregated (mean/median/IQR, % failing)."""
    from qc.export import export as run_export

    path = run_export(store, fmt.value, by.value, out)
    typer.echo(f"wrote {path}")


def report(
    store: Path = typer.Argument(..., help="Audit store written by `qc audit`."),
    out: Path = typer.Option(..., "--out", help="HTML file to write (self-contained)."),
    scan: Optional[str] = typer.Option(None, "--scan", help="Individual report of one stored scan (key or key prefix)."),
    root: Optional[Path] = typer.Option(None, "--root", help="With --scan: folder that relative stored paths "
                                        "(audit --paths relative) are relative to, to show the images."),
):
    """Self-contained HTML report: the whole audit (box plots, control chart, failure rates), or one scan."""
    from qc.html_report import write_group_report, write_scan_report_from_store

    path = write_scan_report_from_store(store, scan, out, root=root) if scan else write_group_report(store, out)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add `audit`, `export` and `report` to ``app`` (input errors -> one line on stderr, exit code 2)."""
    from qc.cli_util import input_errors_exit_2

    for fn in (audit, export, report):
        app.command()(input_errors_exit_2(fn))
