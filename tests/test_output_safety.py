"""Outputs stay where the user put them, and carry no patient identity (issue: security).

* File names made from data (CSV columns, config categories) are sanitised: ``qc.safe_names``.
* A DICOM series with hostile tags (SeriesDescription '../../etc/x<script>...', a PatientID with '/', a formula
  as the protocol) in a folder named after the patient, audited with
  ``--paths hashed`` and ``--paths relative``: no file appears outside the chosen outputs, and no identifier
  (name, id, birth date, accession, the patient's folder name) reaches the progress output, the store, the
  exports (CSV, XLSX, Parquet) or the HTML reports; spreadsheet cells cannot become formulas."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from qc.errors import QCInputError
from qc.safe_names import safe_child, safe_filename
from qc.store import Store

HOSTILE = ["../../etc/x", "a/b", "..", ".", "/etc/passwd", "x\x00y", "tab\tand\nnewline", "\x1b[31mred", "CON",
           "nul.txt", "Patiënt 頭部 ß", "", " ", "-", "a" * 300, "C:\\Windows\\x", "~root"]
PHI = {"PatientName": "DOE^JANE", "PatientID": "ID/../7788-SECRET", "PatientBirthDate": "19610203",
       "AccessionNumber": "ACC55SECRET"}
FOLDER = "DOE_JANE_7788"                      # an archive folder named after the patient
NEEDLES = ["DOE^JANE", "JANE", "7788", "SECRET", "19610203", "ACC55"]


@pytest.mark.parametrize("name", HOSTILE, ids=[repr(h)[:20] for h in HOSTILE])
def test_safe_filename_is_one_printable_component(name, tmp_path):
    s = safe_filename(name)
    assert s and len(s) <= 80 and s == s.strip()
    assert "/" not in s and "\\" not in s and "\0" not in s and ".." not in s and not s.startswith(".")
    assert s.isprintable() and s.isascii()
    assert s.split(".")[0].upper() not in {"CON", "NUL", "PRN", "AUX"}
    p = safe_child(tmp_path, name, ".png")
    assert p.parent == tmp_path and p.resolve().parent == tmp_path.resolve()


def test_safe_filename_keeps_plain_names_and_separates_different_hostile_ones():
    assert safe_filename("overall") == "overall" and safe_filename("bland_altman_image-noise.v2") == "bland_altman_image-noise.v2"
    assert safe_filename("a/b") != safe_filename("a_b") != safe_filename("a\\b")  # changed names get a hash tag
    with pytest.raises(QCInputError):
        safe_child("/tmp", "x", "/../../y")


def _tree(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_validate_plots_named_from_hostile_columns_stay_in_out(tmp_path):
    """`qc validate` writes one PNG per score column; a column named '../../evil' must not escape --out."""
    from qc.cli import app

    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(12)]
    truth = rng.uniform(2, 9, 12)
    col = "../../evil"
    pd.DataFrame({"scan_id": ids, col: truth + rng.normal(0, 0.5, 12)}).to_csv(tmp_path / "pred.csv", index=False)
    pd.DataFrame({"scan_id": ids, col: truth}).to_csv(tmp_path / "ratings.csv", index=False)
    work = tmp_path / "work"
    out = work / "val"
    before = _tree(tmp_path)
    r = CliRunner().invoke(app, ["validate", "--pred", str(tmp_path / "pred.csv"), "--ratings",
                                 str(tmp_path / "ratings.csv"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    new = _tree(tmp_path) - before
    assert new and all(p == work or p.is_relative_to(out) for p in new), sorted(map(str, new))
    pngs = [p.name for p in out.glob("*.png")]
    assert len(pngs) == 1 and pngs[0].startswith("bland_altman_") and ".." not in pngs[0]


# ------------------------------------------------------------------------------------------ hostile DICOM, audited
@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """archive/DOE_JANE_7788/series: a head series with identifying and hostile tags; an in-process Dask cluster."""
    from dask.distributed import LocalCluster

    from phantoms import simulate
    from phantoms.dicom import write_dicom_series

    base = tmp_path_factory.mktemp("hostile")
    root = base / "archive"
    ph = simulate("head", seed=31, matrix=128, slice_mm=10.0)
    extra = {**PHI, "SeriesDescription": "../../etc/x<script>alert(1)</script>",
             "ProtocolName": '=HYPERLINK("http://evil.example","x")'}
    series = write_dicom_series(ph.scan, root / FOLDER / "series", seed=31, extra=extra)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield base, root, series, cluster.scheduler_address


def _audit(base: Path, root: Path, scheduler: str, mode: str, name: str, outputs: bool = True):
    from qc.cli import app

    out = base / f"out_{name}"
    store = out / "audit.duckdb"
    runner = CliRunner()
    logs = []
    r = runner.invoke(app, ["audit", str(root), "--out", str(store), "--scheduler", scheduler, "--paths", mode,
                            "--id-salt", "site-secret"])
    assert r.exit_code == 0, r.output
    logs.append(r.output)
    files = {}
    for fmt, by in (("csv", "scan"), ("xlsx", "scan"), ("parquet", "scan"), ("csv", "protocol")) if outputs else ():
        p = out / f"{by}.{fmt}"
        r = runner.invoke(app, ["export", str(store), "--format", fmt, "--by", by, "--out", str(p)])
        assert r.exit_code == 0, r.output
        files[(by, fmt)] = p
    if outputs:
        r = runner.invoke(app, ["report", str(store), "--out", str(out / "group.html")])
        assert r.exit_code == 0, r.output
    with Store(store, read_only=True) as st:
        key = st.df("SELECT key FROM scans")["key"].iloc[0]
    r = runner.invoke(app, ["report", str(store), "--scan", key, "--out", str(out / "scan.html")])
    assert r.exit_code == 0, r.output
    logs.append(r.output)
    return out, store, key, files, "\n".join(logs)


def _text_of(p: Path) -> str:
    if p.suffix == ".xlsx":
        return pd.read_excel(p).to_csv()
    if p.suffix == ".parquet":
        import duckdb

        return duckdb.sql(f"SELECT * FROM read_parquet('{p}')").df().to_csv()
    text = p.read_text(encoding="utf-8")
    # embedded PNGs are base64: drop them, or a needle of digits/letters could match inside by chance
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,...", text)


def _store_dump(store: Path) -> str:
    parts = []
    with Store(store, read_only=True) as st:
        for table in ("scans", "iqms", "scores", "errors", "store_meta"):
            parts.append(st.df(f"SELECT * FROM {table}").to_csv())
    return "\n".join(parts)


def test_hashed_paths_no_identifier_anywhere_and_nothing_outside_outputs(hostile):
    base, root, series, scheduler = hostile
    before = _tree(base)
    out, store, key, files, logs = _audit(base, root, scheduler, "hashed", "hashed")
    new = _tree(base) - before
    assert all(p == out or p.is_relative_to(out) for p in new), sorted(map(str, new))
    assert not list(base.rglob("etc")) and not Path("/etc/x").exists()
    texts = {str(p): _text_of(p) for p in [*files.values(), out / "group.html", out / "scan.html"]}
    texts["cli output (progress, summary)"] = logs
    texts["store"] = _store_dump(store)
    for where, text in texts.items():
        for needle in NEEDLES:
            assert needle not in text, (needle, where)
        assert str(root) not in text, where
    with Store(store, read_only=True) as st:
        row = st.df("SELECT source_id, path, series_uid FROM scans").iloc[0]
        assert st.meta("path_mode") == "hashed"
    assert row["path"].startswith("path-sha256:") and row["series_uid"] is None
    assert row["source_id"].startswith("dicom-hashed:")
    # the protocol (a formula) is text in every spreadsheet, and the script is escaped in HTML
    csv = pd.read_csv(files[("scan", "csv")])
    assert csv["protocol"].iloc[0] == "'" + '=HYPERLINK("http://evil.example","x")'
    import openpyxl

    ws = openpyxl.load_workbook(files[("scan", "xlsx")]).active
    assert not [c for row_ in ws.iter_rows() for c in row_ if c.data_type == "f"]
    assert "<script>alert" not in texts[str(out / "scan.html")] and "&lt;script&gt;" in texts[str(out / "scan.html")]
    assert "the store holds hashed paths" in texts[str(out / "scan.html")]


def test_relative_paths_hide_the_archive_root_and_report_finds_images_with_root(hostile):
    from qc.cli import app

    base, root, series, scheduler = hostile
    out, store, key, files, logs = _audit(base, root, scheduler, "relative", "relative", outputs=False)
    with Store(store, read_only=True) as st:
        row = st.df("SELECT path, series_uid, result_json FROM scans").iloc[0]
    assert row["path"] == f"{FOLDER}/series" and row["series_uid"]
    for text in (logs, _store_dump(store)):
        assert str(root) not in text and "19610203" not in text and "SECRET" not in text
    assert "give --root DIR" in (out / "scan.html").read_text()
    r = CliRunner().invoke(app, ["report", str(store), "--scan", key, "--root", str(root), "--out", str(out / "s2.html")])
    assert r.exit_code == 0, r.output
    assert "data:image/png;base64," in (out / "s2.html").read_text()
    # one store, one mode
    r = CliRunner().invoke(app, ["audit", str(root), "--out", str(store), "--scheduler", scheduler, "--paths", "absolute"])
    assert r.exit_code == 2 and "--paths relative" in r.output


def test_no_output_file_name_is_derived_from_dicom_tags():
    """The modules that write files take their names from the user (--out) or fixed strings; those that build
    a name from data go through qc.safe_names. A guard against regressions: a file write whose name is an
    f-string must use safe_child/safe_filename."""
    repo = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("qc", "regression", "detectors", "phantoms"):
        for f in (repo / folder).glob("*.py"):
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"/\s*f[\"'][^\"']*\{(?!k:|i:)[^}]*\}", line) and "safe_" not in line:
                    offenders.append(f"{f.relative_to(repo)}:{n}: {line.strip()}")
    allowed = {"phantoms/dicom.py", "phantoms/dataset.py"}  # slice_{k:04d}.dcm, {region}_{i:04d}: integers only
    offenders = [o for o in offenders if o.split(":")[0] not in allowed]
    assert not offenders, offenders
