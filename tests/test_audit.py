"""Protocol audit (qc audit / export, qc.store): Dask batch into DuckDB, exactly-once after SIGKILL, broken
inputs recorded, exports, an external scheduler, and no patient identifier in any output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from qc.audit import AuditJob, build_record, discover, hash_id, model_version, run_audit
from qc.export import GROUPINGS, SCAN_INFO_COLUMNS, export, export_table
from qc.store import Store
from tests.conftest import shared_path

REPO = Path(__file__).resolve().parents[1]
N_GOOD = 7
MV = model_version(None)
DRIVER = "import sys\nfrom qc.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _app() -> typer.Typer:
    from qc.cli import app

    return app


@pytest.fixture(scope="module")
def audit_inputs(tmp_path_factory):
    """7 good simulated scans (head/chest; 3 DICOM series, 4 NIfTI with their uint8 label maps) + 2 broken
    inputs: a truncated .nii.gz and an MR DICOM series."""
    from phantoms import simulate, write_phantom
    from phantoms.dicom import write_dicom_series

    root = tmp_path_factory.mktemp("audit_in")
    good = {}
    for i in range(N_GOOD):
        reg = ("head", "chest")[i % 2]
        ph = simulate(reg, seed=10 + i, matrix=128)
        folder = root / f"site{i % 2}" / f"{reg}_{i}"
        if i % 3 == 0:  # DICOM only
            good[f"{reg}_{i}"] = write_dicom_series(ph.scan, folder / "dicom", seed=10 + i)
        else:
            good[f"{reg}_{i}"] = write_phantom(ph, folder)["scan"]
    mr = simulate("head", seed=99, matrix=128)
    write_dicom_series(mr.scan, root / "other" / "mr", seed=99, extra={"Modality": "MR"})
    data = good["chest_1"].read_bytes()
    (root / "broken").mkdir()
    (root / "broken" / "truncated.nii.gz").write_bytes(data[:100])
    return root, good


@pytest.fixture(scope="module")
def audited(audit_inputs, tmp_path_factory):
    """The inputs audited once through the CLI (2 local worker processes)."""
    root, good = audit_inputs
    store = tmp_path_factory.mktemp("audit_store") / "audit.duckdb"
    r = CliRunner().invoke(_app(), ["audit", str(root), "--out", str(store), "--workers", "2"])
    assert r.exit_code == 0, r.output
    return store, r.output


def _expected_keys(root) -> set[str]:
    return {f"{j.source_id}@{MV}" for j in discover([root]).jobs}


def test_audit_stores_good_scans_and_records_broken_ones(audit_inputs, audited):
    root, good = audit_inputs
    store, output = audited
    assert f"{N_GOOD + 1} scan(s) found" in output and f"{N_GOOD} ok, 1 failed" in output
    with Store(store, read_only=True) as st:
        scans = st.df("SELECT * FROM scans")
        errors = st.df("SELECT * FROM errors")
        iqms = st.df("SELECT * FROM iqms")
        scores = st.df("SELECT * FROM scores")
    assert len(scans) == N_GOOD and scans["key"].is_unique
    paths = set(scans["path"])
    for name, p in good.items():
        assert str(p.resolve()) in paths, name
    # DICOM series are keyed by SeriesInstanceUID, files by content hash; both with the model version
    dicom = scans[scans["source_id"].str.startswith("dicom:")]
    assert len(dicom) == 3 and (dicom["series_uid"] == dicom["source_id"].str[6:]).all()
    assert scans["source_id"].str.startswith("sha256:").sum() == N_GOOD - 3
    assert (scans["key"] == scans["source_id"] + "@" + MV).all()
    assert set(scans["region"]) == {"head", "chest"}
    assert scans["overall"].between(0, 10).all()
    heads = scans[scans["region"] == "head"]
    assert (heads["protocol"] == "PHANTOM HEAD").all() and heads["kvp"].eq(120).all()
    assert heads["ctdivol"].notna().all() and heads["mas"].notna().all()
    assert scans["scanner"].str.startswith("CTQC phantom").all()
    assert dicom["study_date"].notna().all() and dicom["patient_id_hash"].str.fullmatch("[0-9a-f]{64}").all()
    assert scans[["patient_id", "study_uid", "accession_number"]].isna().all().all()  # no --keep-phi
    # long tables hold every IQM and category of every scan, once
    for key, rj in zip(scans["key"], scans["result_json"]):
        res = json.loads(rj)
        assert set(iqms.loc[iqms["key"] == key, "iqm"]) == set(res["iqms"])
        assert set(scores.loc[scores["key"] == key, "category"]) == set(res["categories"])
    assert not iqms.duplicated(["key", "iqm"]).any() and not scores.duplicated(["key", "category"]).any()
    # broken inputs: recorded with a reason; the MR series and the label maps are skipped, not assessed
    failed = errors[errors["kind"] == "error"]
    assert len(failed) == 1 and failed["path"].iloc[0].endswith("truncated.nii.gz")
    assert "truncated" in failed["reason"].iloc[0] and failed["error_type"].iloc[0] == "QCInputError"
    skipped = errors[errors["kind"] == "skipped"]
    mr = skipped[skipped["path"].str.endswith("mr")]
    assert len(mr) == 1 and "modality MR" in mr["reason"].iloc[0] and mr["error_type"].iloc[0] == "NotCTError"
    labels = skipped[skipped["path"].str.endswith("labels.nii.gz")]
    assert len(labels) == N_GOOD - 3 and labels["reason"].str.contains("8-bit").all()
    assert errors["reason"].str.len().gt(0).all() and errors["key"].is_unique


def test_second_run_does_no_new_work(audit_inputs, audited):
    root, _ = audit_inputs
    store, _ = audited
    with Store(store, read_only=True) as st:
        before = st.counts()
    t = time.perf_counter()
    s = run_audit([root], store, workers=2, progress=False)
    assert (s.n_found, s.n_already, s.n_ok, s.n_failed, s.n_skipped, s.workers) == (N_GOOD + 1, N_GOOD + 1, 0, 0, 0, 0)
    assert time.perf_counter() - t < 10  # no cluster started
    with Store(store, read_only=True) as st:
        assert st.counts() == before


def _read(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path)
    if fmt == "xlsx":
        return pd.read_excel(path)
    import duckdb

    return duckdb.sql(f"SELECT * FROM read_parquet('{path}')").df()


def test_exports_all_formats_with_documented_columns(audited, tmp_path):
    store, _ = audited
    with Store(store, read_only=True) as st:
        scans = st.df("SELECT key, protocol, scanner, overall FROM scans")
        iqms = st.df("SELECT key, iqm, value, status FROM iqms")
        cats = sorted(st.df("SELECT DISTINCT category FROM scores")["category"])
    names = sorted(iqms["iqm"].unique())
    rated = sorted(iqms.loc[iqms["status"].isin(["pass", "warn", "fail"]), "iqm"].unique())
    runner, app = CliRunner(), _app()
    for fmt in ("csv", "parquet", "xlsx"):
        for by in GROUPINGS:
            out = tmp_path / f"{by}.{fmt}"
            r = runner.invoke(app, ["export", str(store), "--format", fmt, "--by", by, "--out", str(out)])
            assert r.exit_code == 0, r.output
            df = _read(out, fmt)
            if by == "scan":
                assert list(df.columns) == (SCAN_INFO_COLUMNS + [f"score_{c}" for c in cats]
                                            + [c for n in names for c in (n, f"status_{n}")])
                assert len(df) == len(scans) and set(df["key"]) == set(scans["key"])
                row = df.set_index("key").loc[iqms["key"].iloc[0]]
                q = iqms.iloc[0]
                assert row[f"status_{q['iqm']}"] == q["status"]
                if pd.notna(q["value"]):
                    assert row[q["iqm"]] == pytest.approx(q["value"])
                continue
            expect = [by, "n"] + [f"{n}_{s}" for n in ["overall", *cats] for s in ("mean", "median", "iqr")] \
                + [f"fail_pct_{q}" for q in rated] + ["worst_key", "worst_path", "worst_overall"]
            assert list(df.columns) == expect
            assert df["n"].sum() == len(scans)
            if by == "protocol":
                for _, g in df.iterrows():
                    part = scans[scans["protocol"] == g["protocol"]]
                    assert g["n"] == len(part)
                    assert g["overall_mean"] == pytest.approx(part["overall"].mean())
                    assert g["overall_median"] == pytest.approx(part["overall"].median())
                    assert g["worst_overall"] == pytest.approx(part["overall"].min())
                    assert part.set_index("key").loc[g["worst_key"], "overall"] == pytest.approx(part["overall"].min())
                    st_ = iqms[iqms["key"].isin(part["key"]) & iqms["status"].isin(["pass", "warn", "fail"])]
                    for q in rated:
                        s = st_.loc[st_["iqm"] == q, "status"]
                        if len(s):
                            assert g[f"fail_pct_{q}"] == pytest.approx(100 * (s == "fail").mean())
    # the month grouping (study_date, else the audit date) covers every scan
    assert export_table(store, "month")["n"].sum() == len(scans)


def test_sigkill_mid_run_then_rerun_gives_every_scan_once(audit_inputs, tmp_path):
    import psutil

    root, _ = audit_inputs
    store = tmp_path / "killed.duckdb"
    cmd = [sys.executable, "-c", DRIVER, "audit", str(root), "--out", str(store), "--workers", "1"]
    log_path = tmp_path / "audit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    children = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            text = log_path.read_text()
            if re.search(r"^\[\d+/\d+\] ok", text, re.M):  # printed right after a scan's transaction committed
                break
            assert proc.poll() is None, f"audit ended before it could be killed:\n{text}"
            try:
                children = psutil.Process(proc.pid).children(recursive=True) or children
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)
        else:
            pytest.fail("no scan finished within 120 s:\n" + log_path.read_text())
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        for c in children:  # the workers this test started (they also exit on their own once orphaned)
            try:
                c.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(children, timeout=15)
    assert proc.returncode == -signal.SIGKILL
    with Store(store, read_only=True) as st:  # re-opening after SIGKILL works (WAL replay)
        mid = st.counts()
    assert 1 <= mid["scans"] < N_GOOD, mid

    r = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{mid['scans'] + mid['errors']} already stored" in r.stdout
    with Store(store, read_only=True) as st:
        keys = st.df("SELECT key FROM scans")["key"]
        errs = st.df("SELECT key, path, kind FROM errors")
        dup_iqms = st.df("SELECT key, iqm, count(*) n FROM iqms GROUP BY key, iqm HAVING n > 1")
        per_scan = st.df("SELECT s.key, count(i.iqm) n FROM scans s LEFT JOIN iqms i USING (key) GROUP BY s.key")
    assert keys.is_unique and len(keys) == N_GOOD
    assert set(keys) | set(errs.loc[errs["kind"] == "error", "key"]) == _expected_keys(root)
    assert len(dup_iqms) == 0 and (per_scan["n"] > 0).all()
    assert errs["key"].is_unique and (errs["kind"] == "error").sum() == 1


def test_existing_scheduler_and_manifest(audit_inputs, tmp_path):
    """--scheduler path with a cluster the test starts itself; a manifest with metadata and identifier columns."""
    from dask.distributed import LocalCluster

    root, good = audit_inputs
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({
        "path": [str(good["head_0"].parent), os.path.relpath(good["chest_1"], tmp_path), "nowhere/scan.nii.gz"],
        "protocol": ["Routine head", "", ""],
        "PatientID": ["P-123", "P-456", ""],
        "PatientName": ["DOE^JANE", "ROE^RICHARD", ""],
        "site": ["A", "B", "C"],
    }).to_csv(manifest, index=False)
    store = tmp_path / "sched.duckdb"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        s = run_audit([manifest], store, scheduler=cluster.scheduler_address, id_salt="site-secret", progress=False)
    assert (s.n_found, s.n_ok, s.n_failed, s.n_skipped, s.workers) == (2, 2, 0, 1, 1)
    assert s.dropped_columns == ["PatientName"]
    with Store(store, read_only=True) as st:
        scans = st.df("SELECT * FROM scans ORDER BY region DESC").set_index("region")
        errors = st.df("SELECT * FROM errors")
    assert scans.loc["head", "protocol"] == "Routine head"           # manifest override
    assert scans.loc["chest", "protocol"] == "PHANTOM CHEST"         # header value kept
    assert scans.loc["head", "patient_id_hash"] == hash_id("P-123", "site-secret")
    assert scans.loc["chest", "patient_id_hash"] == hash_id("P-456", "site-secret")
    assert json.loads(scans.loc["head", "extra"]) == {"site": "A"}
    dump = scans.to_csv() + errors.to_csv()
    for phi in ("P-123", "P-456", "DOE^JANE", "ROE"):
        assert phi not in dump
    assert errors["source_id"].str.startswith("missing:").all() and errors["reason"].iloc[0] == "no such file or folder"


def test_keep_phi_and_salted_hashes():
    job = AuditJob(source_id="dicom:1.2.3", path="/x", kind="dicom", series_uid="1.2.3",
                   ids={"patient_id": "PID1", "study_uid": "1.2.9", "accession_number": "ACC7"})
    res = {"region": "head", "overall": 7.5, "scan": {"StudyDate": "20250102"}, "iqms": {}, "categories": {}}
    plain = build_record(job, res, MV, "s1").scan
    assert plain["patient_id_hash"] == hash_id("PID1", "s1") != hash_id("PID1", "s2")
    assert "patient_id" not in plain and "accession_number" not in plain
    assert "PID1" not in json.dumps(plain, default=str) and "ACC7" not in json.dumps(plain, default=str)
    kept = build_record(job, res, MV, "s1", keep_phi=True).scan
    assert (kept["patient_id"], kept["study_uid"], kept["accession_number"]) == ("PID1", "1.2.9", "ACC7")
    assert str(plain["study_date"]) == "2025-01-02"


def test_cli_bad_inputs_exit_2(tmp_path):
    runner, app = CliRunner(), _app()
    bad = tmp_path / "not_a_store.duckdb"
    bad.write_text("hello")
    for args, needle in [
        (["audit", str(tmp_path / "missing"), "--out", str(tmp_path / "s.duckdb")], "no such file or folder"),
        (["export", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "x.csv")], "no such store"),
        (["export", str(bad), "--out", str(tmp_path / "x.csv")], "store"),
        (["report", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "r.html")], "no such store"),
    ]:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output and "Traceback" not in r.output


def test_no_patient_identifier_in_any_output(tmp_path):
    """Audit the real GE head series (PatientID QMNx85rKkkg, PatientName REMOVED): the id is in no output."""
    import pydicom

    folder = shared_path("head_ct_ge_tilted")
    pid = str(pydicom.dcmread(folder / "01.dcm", stop_before_pixels=True).PatientID)
    assert pid == "QMNx85rKkkg"
    store = tmp_path / "real.duckdb"
    s = run_audit([folder], store, workers=1, progress=False)
    assert s.n_ok == 1, s
    runner, app = CliRunner(), _app()
    outputs = []
    for by in GROUPINGS:
        out = tmp_path / f"{by}.csv"
        assert runner.invoke(app, ["export", str(store), "--format", "csv", "--by", by, "--out", str(out)]).exit_code == 0
        outputs.append(out)
    html = tmp_path / "report.html"
    assert runner.invoke(app, ["report", str(store), "--out", str(html)]).exit_code == 0
    key = export_table(store, "scan")["key"].iloc[0]
    one = tmp_path / "scan.html"
    r = runner.invoke(app, ["report", str(store), "--scan", key, "--out", str(one)])
    assert r.exit_code == 0, r.output
    outputs += [html, one]
    for p in outputs:
        text = p.read_text(encoding="utf-8")
        assert pid not in text and "REMOVED" not in text, p
    # and no column of any table holds it (the DuckDB file itself is compressed, so query it)
    with Store(store, read_only=True) as st:
        for table in ("scans", "iqms", "scores", "errors"):
            cols = st.df(f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'")["column_name"]
            for c in cols:
                n = st.con.execute(f'SELECT count(*) FROM {table} WHERE CAST("{c}" AS VARCHAR) LIKE ?', [f"%{pid}%"]).fetchone()[0]
                assert n == 0, (table, c)
        row = st.df("SELECT patient_id_hash, scanner, region FROM scans").iloc[0]
    assert row["patient_id_hash"] == hash_id(pid, "ctqc-audit-v1")
    assert row["scanner"] == "GE MEDICAL SYSTEMS HiSpeed Dual" and row["region"] == "head"
    export(store, "xlsx", "scan", tmp_path / "scan.xlsx")
    assert pid not in pd.read_excel(tmp_path / "scan.xlsx").to_csv()


def test_worker_crash_is_retried_once_then_recorded(tmp_path, monkeypatch):
    """A scan whose worker process dies (here os._exit(1) through the documented test hook
    ``qc.audit.TEST_CRASH_ENV``, as the OOM killer would end it) is attempted exactly twice, then recorded in
    ``errors`` with the reason; the other scans, queued on the same single worker, are stored, and the run
    ends normally (the CLI's exit code 0)."""
    import SimpleITK as sitk

    from phantoms import simulate
    from qc.audit import TEST_CRASH_ENV

    root = tmp_path / "in"
    for i, name in enumerate(("ok_a", "crash_me", "ok_b")):
        (root / name).mkdir(parents=True)
        img = sitk.Cast(simulate("head", seed=40 + i, matrix=128, slice_mm=5.0).scan.to_sitk(), sitk.sitkInt16)
        sitk.WriteImage(img, str(root / name / "scan.nii.gz"))
    attempts = tmp_path / "attempts.log"
    # inherited by the worker processes the LocalCluster's nannies start (and restart) from this process
    monkeypatch.setenv(TEST_CRASH_ENV, "crash_me")
    monkeypatch.setenv("CTQC_TEST_CRASH_LOG", str(attempts))
    store = tmp_path / "a.duckdb"
    t = time.perf_counter()
    r = CliRunner().invoke(_app(), ["audit", str(root), "--out", str(store), "--workers", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert time.perf_counter() - t < 120
    crashed = [ln for ln in attempts.read_text().splitlines() if ln]
    assert len(crashed) == 2 and all("crash_me" in p for p in crashed), crashed
    with Store(store, read_only=True) as st:
        scans = st.df("SELECT path FROM scans")["path"]
        errs = st.df("SELECT path, reason, error_type, kind FROM errors")
    assert sorted(Path(p).parent.name for p in scans) == ["ok_a", "ok_b"]
    assert len(errs) == 1 and "crash_me" in errs["path"][0] and errs["kind"][0] == "error"
    assert errs["error_type"][0] == "KilledWorker"
    assert errs["reason"][0].startswith("the worker assessing this scan died twice"), errs["reason"][0]
