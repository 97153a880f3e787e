"""Export an audit store (:mod:`qc.store`) as CSV, Parquet or Excel, per scan or aggregated.

``by='scan'`` — one row per stored scan, columns in this order:

* ``key, source_id, path, series_uid, region, protocol, scanner, kernel, kvp`` [kV], ``mas`` [mAs],
  ``ctdivol`` [mGy], ``study_date``, ``patient_id_hash, study_id_hash`` (salted sha256),
  ``overall`` (0-10), ``n_warnings, model_version, assessed_at`` (UTC), plus ``patient_id, study_uid,
  accession_number`` only when a store was written with ``--keep-phi`` (otherwise the columns are left out);
* ``score_<category>`` — each category score (0-10, empty = not assessed), categories sorted by name;
* ``<iqm>`` — each IQM value in its registry unit, then ``status_<iqm>`` (pass|warn|fail|info|not_measured),
  IQMs sorted by name; empty where the IQM does not apply to the scan's region.

``by='protocol' | 'scanner' | 'month'`` — one row per group (``month`` = YYYY-MM of study_date, else of
assessed_at; an empty protocol/scanner is the group ``(unknown)``), sorted by group:

* the group column (``protocol``, ``scanner`` or ``month``), ``n`` (scans in the group);
* ``overall_mean, overall_median, overall_iqr`` and ``<category>_mean, _median, _iqr`` for every
  category (IQR = 75th - 25th percentile; scans where the category was not assessed are left out);
* ``fail_pct_<iqm>`` — % of the group's scans rated on that IQM (status pass/warn/fail) whose status is
  'fail' (empty when none was rated); IQMs never rated in the store get no column;
* ``worst_key, worst_path, worst_overall`` — the scan with the lowest overall score.

Formats: ``csv`` (pandas), ``parquet`` (DuckDB ``COPY ... (FORMAT PARQUET)``), ``xlsx`` (openpyxl, one sheet
named after ``by``).

Text from the scans (protocol, scanner and kernel come from DICOM tags or a manifest) cannot become a
spreadsheet formula (CSV/formula injection): in ``xlsx`` every text cell is stored as text, never as a formula;
in ``csv`` a text value that a spreadsheet would evaluate (starting with ``=``, ``@``, a tab, a carriage return,
or ``+``/``-`` not followed by a number) gets a leading apostrophe (OWASP). Parquet is typed: unchanged.
The file is written where ``out`` says; nothing in its name comes from the data.
"""

from __future__ import annotations

from pathlib import Path

from qc.errors import QCInputError
from qc.store import PHI_COLUMNS, Store

FORMATS = ("csv", "parquet", "xlsx")
GROUPINGS = ("scan", "protocol", "scanner", "month")
SCAN_INFO_COLUMNS = ["key", "source_id", "path", "series_uid", "region", "protocol", "scanner", "kernel", "kvp", "mas",
                     "ctdivol", "study_date", "patient_id_hash", "study_id_hash", "overall", "n_warnings",
                     "model_version", "assessed_at"]
UNKNOWN = "(unknown)"


def _load(store):
    with Store(store, read_only=True) as st:
        cols = ", ".join(SCAN_INFO_COLUMNS + list(PHI_COLUMNS))
        scans = st.df(f"SELECT {cols} FROM scans ORDER BY assessed_at, key")
        iqms = st.df("SELECT key, iqm, value, status FROM iqms")
        scores = st.df("SELECT key, category, score FROM scores")
    for c in PHI_COLUMNS:  # keep-phi columns only when the store holds them
        if scans[c].isna().all():
            scans = scans.drop(columns=c)
    return scans, iqms, scores


def scan_table(store):
    """One row per scan (columns in the module docstring), a pandas DataFrame."""
    import pandas as pd

    scans, iqms, scores = _load(store)
    out = scans
    if len(scores):
        sc = scores.pivot(index="key", columns="category", values="score")
        sc = sc[sorted(sc.columns)].add_prefix("score_")
        out = out.merge(sc, left_on="key", right_index=True, how="left")
    if len(iqms):
        val = iqms.pivot(index="key", columns="iqm", values="value")
        st = iqms.pivot(index="key", columns="iqm", values="status")
        names = sorted(val.columns)
        both = pd.concat([val[names], st[names].add_prefix("status_")], axis=1)
        both = both[[c for n in names for c in (n, f"status_{n}")]]
        out = out.merge(both, left_on="key", right_index=True, how="left")
    return out.reset_index(drop=True)


def group_table(store, by: str):
    """Aggregates per protocol, scanner or month (columns in the module docstring), a pandas DataFrame."""
    import numpy as np
    import pandas as pd

    if by not in GROUPINGS or by == "scan":
        raise QCInputError(f"--by must be one of {', '.join(GROUPINGS)}")
    scans, iqms, scores = _load(store)
    if by == "month":
        when = pd.to_datetime(scans["study_date"]).fillna(pd.to_datetime(scans["assessed_at"]))
        scans["month"] = when.dt.strftime("%Y-%m")
    scans[by] = scans[by].fillna(UNKNOWN).replace("", UNKNOWN)
    group_of = scans.set_index("key")[by]
    wide = scans[["key", by, "overall", "path"]].copy()
    categories = sorted(scores["category"].unique()) if len(scores) else []
    if categories:
        sc = scores.pivot(index="key", columns="category", values="score")
        wide = wide.merge(sc, left_on="key", right_index=True, how="left")

    def iqr(s):
        s = s.dropna()
        return float(np.percentile(s, 75) - np.percentile(s, 25)) if len(s) else np.nan

    rows = []
    rated = iqms[iqms["status"].isin(["pass", "warn", "fail"])].copy()
    rated[by] = rated["key"].map(group_of)
    rated_iqms = sorted(rated["iqm"].unique())
    for g, part in wide.groupby(by, sort=True):
        row = {by: g, "n": len(part)}
        for name in ["overall", *categories]:
            s = part[name].dropna()
            row[f"{name}_mean"] = float(s.mean()) if len(s) else np.nan
            row[f"{name}_median"] = float(s.median()) if len(s) else np.nan
            row[f"{name}_iqr"] = iqr(s)
        rg = rated[rated[by] == g]
        for q in rated_iqms:
            st = rg.loc[rg["iqm"] == q, "status"]
            row[f"fail_pct_{q}"] = 100.0 * float((st == "fail").mean()) if len(st) else np.nan
        w = part.dropna(subset=["overall"])
        if len(w):
            worst = w.loc[w["overall"].idxmin()]
            row.update(worst_key=worst["key"], worst_path=worst["path"], worst_overall=float(worst["overall"]))
        else:
            row.update(worst_key=None, worst_path=None, worst_overall=np.nan)
        rows.append(row)
    cols = [by, "n"] + [f"{n}_{s}" for n in ["overall", *categories] for s in ("mean", "median", "iqr")] \
        + [f"fail_pct_{q}" for q in rated_iqms] + ["worst_key", "worst_path", "worst_overall"]
    return pd.DataFrame(rows, columns=cols)


def export_table(store, by: str = "scan"):
    if by not in GROUPINGS:
        raise QCInputError(f"--by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    return scan_table(store) if by == "scan" else group_table(store, by)


_FORMULA_START = ("=", "@", "\t", "\r", "+", "-")


def _spreadsheet_safe(v):
    """A text value a spreadsheet would not evaluate (see the module docstring); other values unchanged."""
    if not isinstance(v, str) or not v.startswith(_FORMULA_START):
        return v
    if v[0] in "+-":
        try:
            float(v)
            return v  # a signed number written as text
        except ValueError:
            pass
    return "'" + v


def _csv_safe(df):
    from pandas.api.types import is_object_dtype, is_string_dtype

    out = df.copy()
    for c in out.columns:
        if is_object_dtype(out[c]) or is_string_dtype(out[c]):
            out[c] = out[c].map(_spreadsheet_safe, na_action="ignore")
    return out


def _xlsx_no_formulas(path: Path) -> None:
    """openpyxl stores a string that starts with '=' as a formula: store every such cell as text instead."""
    import openpyxl

    wb = openpyxl.load_workbook(path)
    changed = False
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for cell in row:
                if cell.data_type == "f":
                    cell.data_type = "s"
                    changed = True
    if changed:
        wb.save(path)


def export(store, fmt: str, by: str, out) -> Path:
    """Write the table for ``by`` to ``out`` in ``fmt`` (csv|parquet|xlsx); returns the path."""
    import pandas as pd

    if fmt not in FORMATS:
        raise QCInputError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    df = export_table(store, by)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            _csv_safe(df).to_csv(out, index=False)
        elif fmt == "parquet":
            import duckdb

            con = duckdb.connect()
            try:
                con.register("export_df", df)
                target = str(out).replace("'", "''")
                con.execute(f"COPY export_df TO '{target}' (FORMAT PARQUET)")
            finally:
                con.close()
        else:
            xl = df.copy()
            for c in xl.columns:  # Excel has no time zones; keep dates as dates
                if isinstance(xl[c].dtype, pd.DatetimeTZDtype):
                    xl[c] = xl[c].dt.tz_localize(None)
            xl.to_excel(out, index=False, sheet_name=by, engine="openpyxl")
            _xlsx_no_formulas(out)
    except OSError as exc:
        raise QCInputError(f"cannot write output: {exc.strerror}", out) from None
    return out
