"""The audit store: one DuckDB file that a protocol audit (``qc audit``) fills scan by scan.

Keys. Every input has a *source id*: ``dicom:<SeriesInstanceUID>`` for a DICOM series (``dicom-hashed:<salted
sha256 of the UID>`` in a store written with ``--paths hashed``), ``sha256:<hex>`` (of the file content) for
NIfTI/NRRD/MHA files, ``missing:<salted sha256 of the path>`` for a path that does not exist (a manifest row, a
broken symbolic link), ``unreadable:<salted sha256 of the path>`` for a file that cannot be opened. The
row key is ``<source id>@<model version>``; the model version is ``ctqc-<version>+rubric`` or
``ctqc-<version>+model-<sha256 of the model JSON, 16 hex>``, so re-running with another model re-assesses
everything, and re-running with the same one skips every key already in ``scans`` or ``errors``.

Exactly once. Every finished scan is written in one transaction (its ``scans`` row, its ``iqms`` rows and
its ``scores`` rows, or one ``errors`` row) and every table has a PRIMARY KEY, so a process killed at any
moment (SIGKILL included) leaves each scan either completely stored or absent; DuckDB replays its WAL on
the next open.

Tables (units in brackets):

``scans``
    key (PK), source_id, model_version, path (file, or folder holding the series; absolute, relative to the audited
    input, or ``path-sha256:<salted hash>``: see :class:`qc.audit.PathPolicy`), series_uid (NULL with
    ``--paths hashed``), region
    (head|chest), protocol (ProtocolName, else SeriesDescription, else StudyDescription), scanner
    (Manufacturer + ManufacturerModelName), kernel (ConvolutionKernel), kvp [kV], mas (tube current-time
    product) [mAs], ctdivol [mGy], study_date (DATE), patient_id_hash / study_id_hash (salted sha256 of
    PatientID / StudyInstanceUID, hex), patient_id / study_uid / accession_number (originals, NULL unless
    ``--keep-phi``), overall (0-10), n_warnings, warnings (JSON list), extra (JSON: manifest metadata
    columns), result_json (the full :meth:`qc.results.Assessment.to_json_dict`, for individual reports),
    assessed_at (TIMESTAMP, UTC).
``iqms``
    key, iqm, value [unit], unit, direction, status (pass|warn|fail|info|not_measured); PK (key, iqm).
``scores``
    key, category, score (0-10, NULL = not assessed); PK (key, category).
``errors``
    key (PK), source_id, model_version, path, kind ('error' = the assessment failed, 'skipped' = not a
    tomographic CT: scout/localizer, other modality, 8-bit label map), reason (one line), error_type
    (exception class name), at (TIMESTAMP, UTC).

``store_meta``
    name (PK), value: ``schema_version``, and ``path_mode`` (absolute|relative|hashed), fixed by the first audit.

Patient name, patient ID, birth date and accession number are never written, except the three identifiers
in their own columns with ``keep_phi``. Paths are written as the audit's ``--paths`` mode says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from qc.errors import QCInputError

SCHEMA_VERSION = "1"

SCAN_COLUMNS: dict[str, str] = {
    "key": "VARCHAR PRIMARY KEY",
    "source_id": "VARCHAR NOT NULL",
    "model_version": "VARCHAR NOT NULL",
    "path": "VARCHAR",
    "series_uid": "VARCHAR",
    "region": "VARCHAR",
    "protocol": "VARCHAR",
    "scanner": "VARCHAR",
    "kernel": "VARCHAR",
    "kvp": "DOUBLE",
    "mas": "DOUBLE",
    "ctdivol": "DOUBLE",
    "study_date": "DATE",
    "patient_id_hash": "VARCHAR",
    "study_id_hash": "VARCHAR",
    "patient_id": "VARCHAR",
    "study_uid": "VARCHAR",
    "accession_number": "VARCHAR",
    "overall": "DOUBLE",
    "n_warnings": "INTEGER",
    "warnings": "VARCHAR",
    "extra": "VARCHAR",
    "result_json": "VARCHAR",
    "assessed_at": "TIMESTAMP",
}
IQM_COLUMNS = {"key": "VARCHAR NOT NULL", "iqm": "VARCHAR NOT NULL", "value": "DOUBLE", "unit": "VARCHAR",
               "direction": "VARCHAR", "status": "VARCHAR"}
SCORE_COLUMNS = {"key": "VARCHAR NOT NULL", "category": "VARCHAR NOT NULL", "score": "DOUBLE"}
ERROR_COLUMNS = {"key": "VARCHAR PRIMARY KEY", "source_id": "VARCHAR", "model_version": "VARCHAR", "path": "VARCHAR",
                 "kind": "VARCHAR", "reason": "VARCHAR", "error_type": "VARCHAR", "at": "TIMESTAMP"}
#: identifier columns that stay NULL unless the audit runs with keep_phi
PHI_COLUMNS = ("patient_id", "study_uid", "accession_number")


def _ddl() -> list[str]:
    def cols(d):
        return ", ".join(f'"{k}" {v}' for k, v in d.items())

    return [
        f"CREATE TABLE IF NOT EXISTS scans ({cols(SCAN_COLUMNS)})",
        f"CREATE TABLE IF NOT EXISTS iqms ({cols(IQM_COLUMNS)}, PRIMARY KEY (key, iqm))",
        f"CREATE TABLE IF NOT EXISTS scores ({cols(SCORE_COLUMNS)}, PRIMARY KEY (key, category))",
        f"CREATE TABLE IF NOT EXISTS errors ({cols(ERROR_COLUMNS)})",
        "CREATE TABLE IF NOT EXISTS store_meta (name VARCHAR PRIMARY KEY, value VARCHAR)",
    ]


def utc_now() -> datetime:
    """Naive UTC timestamp (the store's TIMESTAMP convention)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class ScanRecord:
    """Everything one successful assessment writes: a ``scans`` row and its long ``iqms``/``scores`` rows."""

    scan: dict
    iqms: list[dict] = field(default_factory=list)     # {iqm, value, unit, direction, status}
    scores: list[dict] = field(default_factory=list)   # {category, score}


def _connect(path: Path, read_only: bool):
    import duckdb

    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        msg = str(exc).splitlines()[0]
        if "lock" in msg.lower():
            raise QCInputError("store is in use by another process (an audit still running?)", path) from None
        raise QCInputError(f"cannot open store: {msg[:200]}", path) from None
    except duckdb.Error as exc:
        raise QCInputError(f"not a DuckDB store: {str(exc).splitlines()[0][:200]}", path) from None


class Store:
    """A DuckDB audit store (see the module docstring for tables and keys). Use as a context manager.

    ``read_only`` opens an existing store for export/report (several readers may share it);
    otherwise the file is created if needed and the tables are created if missing.
    """

    def __init__(self, path, read_only: bool = False):
        self.path = Path(path)
        if read_only and not self.path.is_file():
            raise QCInputError("no such store", self.path)
        if not read_only and self.path.exists() and self.path.is_dir():
            raise QCInputError("store path is a folder, give a .duckdb file", self.path)
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise QCInputError(f"cannot create the store's folder: {exc.strerror}", self.path) from None
        self.read_only = read_only
        self.con = _connect(self.path, read_only)
        if read_only:
            have = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            missing = {"scans", "iqms", "scores", "errors"} - have
            if missing:
                self.con.close()
                raise QCInputError(f"not an audit store (missing tables: {', '.join(sorted(missing))})", self.path)
        else:
            for stmt in _ddl():
                self.con.execute(stmt)
            self.con.execute("INSERT OR IGNORE INTO store_meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])

    # -- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    # -- store_meta ---------------------------------------------------------------------------------
    def meta(self, name: str) -> str | None:
        row = self.con.execute("SELECT value FROM store_meta WHERE name = ?", [name]).fetchone()
        return None if row is None else row[0]

    def require_meta(self, name: str, value: str, option: str) -> None:
        """Record ``name = value`` on first use; refuse (QCInputError) a later run that asks for another value.
        A store from before the setting existed holds absolute paths."""
        have = self.meta(name)
        if have is None and name == "path_mode" and self.con.execute("SELECT count(*) FROM scans").fetchone()[0] + \
                self.con.execute("SELECT count(*) FROM errors").fetchone()[0] > 0:
            have = "absolute"
            self.con.execute("INSERT OR IGNORE INTO store_meta VALUES (?, ?)", [name, have])
        if have is None:
            self.con.execute("INSERT OR IGNORE INTO store_meta VALUES (?, ?)", [name, value])
        elif have != value:
            raise QCInputError(f"store was written with {option} {have}; use the same (or another store), "
                               f"not {option} {value}", self.path)

    # -- queries -----------------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        """Keys already in ``scans`` or ``errors`` (an audit does not repeat them)."""
        rows = self.con.execute("SELECT key FROM scans UNION ALL SELECT key FROM errors").fetchall()
        return {r[0] for r in rows}

    def counts(self) -> dict[str, int]:
        """Rows per table: scans, iqms, scores, errors (kind 'error'), skipped (errors of kind 'skipped')."""
        q = ("SELECT (SELECT count(*) FROM scans), (SELECT count(*) FROM iqms), (SELECT count(*) FROM scores), "
             "(SELECT count(*) FROM errors WHERE kind <> 'skipped'), (SELECT count(*) FROM errors WHERE kind = 'skipped')")
        s, i, c, e, k = self.con.execute(q).fetchone()
        return {"scans": s, "iqms": i, "scores": c, "errors": e, "skipped": k}

    def df(self, sql: str, params: list | None = None):
        """Run a query and return a pandas DataFrame."""
        return self.con.execute(sql, params or []).df()

    # -- writes (one transaction each) -------------------------------------------------------------
    def _insert(self, table: str, rows: list[dict], columns: list[str]) -> None:
        if not rows:
            return
        tpl = "(" + ", ".join("?" for _ in columns) + ")"
        params = [r.get(c) for r in rows for c in columns]
        names = ", ".join(f'"{c}"' for c in columns)  # quoted: 'at' is a keyword
        self.con.execute(f"INSERT OR IGNORE INTO {table} ({names}) VALUES "
                         + ", ".join(tpl for _ in rows), params)

    def add_scan(self, rec: ScanRecord) -> bool:
        """Write one assessed scan (scans + iqms + scores) in a single transaction. Returns False (and
        writes nothing) when the key is already stored."""
        key = rec.scan["key"]
        scan = {**rec.scan}
        for k in ("warnings", "extra"):
            if isinstance(scan.get(k), (list, dict)):
                scan[k] = json.dumps(scan[k], default=str)
        if isinstance(scan.get("result_json"), dict):
            scan["result_json"] = json.dumps(scan["result_json"], default=str, separators=(",", ":"))
        scan.setdefault("assessed_at", utc_now())
        cols = [c for c in SCAN_COLUMNS if c in scan]
        self.con.execute("BEGIN TRANSACTION")
        try:
            if self.con.execute("SELECT 1 FROM scans WHERE key = ?", [key]).fetchone():
                self.con.execute("ROLLBACK")
                return False
            self._insert("scans", [scan], cols)
            self._insert("iqms", [{**r, "key": key} for r in rec.iqms], list(IQM_COLUMNS))
            self._insert("scores", [{**r, "key": key} for r in rec.scores], list(SCORE_COLUMNS))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return True

    def add_error(self, key: str, source_id: str, model_version: str, path: str, reason: str, error_type: str,
                  kind: str = "error") -> bool:
        """Record a failed ('error') or refused ('skipped') input. Returns False when the key is already stored."""
        row = {"key": key, "source_id": source_id, "model_version": model_version, "path": path, "kind": kind,
               "reason": reason, "error_type": error_type, "at": utc_now()}
        self.con.execute("BEGIN TRANSACTION")
        try:
            exists = self.con.execute("SELECT 1 FROM errors WHERE key = ? UNION ALL SELECT 1 FROM scans WHERE key = ?",
                                      [key, key]).fetchone()
            if not exists:
                self._insert("errors", [row], list(ERROR_COLUMNS))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return not exists

    def delete_errors(self, kind: str = "error") -> int:
        """Forget recorded failures of one kind so that the next audit retries them; returns how many."""
        n = self.con.execute("SELECT count(*) FROM errors WHERE kind = ?", [kind]).fetchone()[0]
        self.con.execute("DELETE FROM errors WHERE kind = ?", [kind])
        return int(n)


def open_store(path, read_only: bool = False) -> Store:
    return Store(path, read_only=read_only)
