"""`qc audit` over ONE folder holding every input of the bad-input catalogue (tests/catalogue.py) plus 5 good
small scans (NIfTI and DICOM; one DICOM series whose first file is a localizer of the same series, two series
in one flat folder). The run must finish with exit code 0 (documented in qc/cli_audit.py: failures are
recorded, not fatal), assess the 5 good scans, record every bad input with its expected reason, and a second
run must do no work."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from phantoms import simulate
from phantoms.dicom import write_dicom_series
from qc.audit import discover, run_audit
from qc.store import Store
from tests import catalogue as cat

# name -> region; how each is written: see _good_scans
GOOD = {"head_nifti": "head", "chest_nifti": "chest", "head_dicom_scout_first": "head", "flat_chest": "chest",
        "flat_head": "head"}


def _nifti(ph, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(ph.scan.to_sitk(), sitk.sitkInt16), str(path))
    return path


def _good_scans(folder: Path) -> dict[str, tuple[Path, str | None]]:
    """5 good scans (matrix 128, 5-10 mm slices): name -> (stored path, SeriesInstanceUID or None)."""
    import pydicom
    from pydicom.uid import generate_uid

    head = dict(matrix=128, slice_mm=5.0)
    chest = dict(matrix=128, slice_mm=10.0)
    out = {"head_nifti": (_nifti(simulate("head", seed=21, **head), folder / "head_nifti" / "scan.nii.gz"), None),
           "chest_nifti": (_nifti(simulate("chest", seed=22, **chest), folder / "chest_nifti" / "scan.nii.gz"), None)}
    # a DICOM series whose FIRST file is a localizer carrying the same SeriesInstanceUID (as some scanners write)
    d = write_dicom_series(simulate("head", seed=23, **head).scan, folder / "head_scout" / "series", seed=23)
    ds = pydicom.dcmread(d / "slice_0000.dcm")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]  # a coronal topogram
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["ctqc-scout-23"])
    ds.save_as(d / "0000_scout.dcm")
    out["head_dicom_scout_first"] = (d, str(ds.SeriesInstanceUID))
    # two series dumped flat into one folder, names interleaved
    flat = folder / "flat"
    flat.mkdir(parents=True)
    for name, reg, seed, kw in (("flat_chest", "chest", 24, chest), ("flat_head", "head", 25, head)):
        tmp = write_dicom_series(simulate(reg, seed=seed, **kw).scan, folder / f"_{name}", seed=seed)
        uid = str(pydicom.dcmread(next(tmp.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
        for f in sorted(tmp.iterdir()):
            f.rename(flat / f"IM_{f.stem[-4:]}_{seed}")
        tmp.rmdir()
        out[name] = (flat, uid)
    return out


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """One folder: archive/cases/<case id>/... (the catalogue) and archive/good/... (5 good scans)."""
    root = tmp_path_factory.mktemp("catalogue_audit") / "archive"
    ph = simulate("head", seed=1, matrix=128, slice_mm=5.0)  # 33 slices: the 13 cases that are assessed stay quick
    built = {}
    for i, case in enumerate(cat.CASES):
        built[case.id] = case.build(root / "cases" / case.id, ph, 100 + i, **dict(case.kwargs))
    good = _good_scans(root / "good")
    return root, built, good


@pytest.fixture(scope="module")
def audited(archive, tmp_path_factory):
    from qc.cli import app

    root, _, _ = archive
    store = tmp_path_factory.mktemp("catalogue_store") / "audit.duckdb"
    first = CliRunner().invoke(app, ["audit", str(root), "--out", str(store), "--workers", "2"])
    with Store(store, read_only=True) as st:
        scans = st.df("SELECT key, path, series_uid, region, overall, warnings FROM scans")
        errors = st.df("SELECT key, path, kind, reason, error_type FROM errors")
        before = st.counts()
    second = run_audit([root], store, workers=2, progress=False)
    with Store(store, read_only=True) as st:
        after = st.counts()
    return first, scans, errors, second, before, after


def _expected():
    """[(case id, sub-path, AuditExpect)] for every catalogue input."""
    return [(c.id, sub, exp) for c in cat.CASES for sub, exp in c.audit]


def _records_under(df, folder: Path):
    prefix = str(folder.resolve())
    return df[df["path"].map(lambda p: p == prefix or p.startswith(prefix + "/"))]


def test_run_finishes_with_documented_exit_code_and_counts(audited):
    first, scans, errors, _, _, _ = audited
    assert first.exit_code == 0, first.output
    assert "Traceback" not in first.output
    exp = [e for _, _, e in _expected()]
    n_scan = sum(e.outcome == "scan" for e in exp)
    n_task_errors = sum(e.outcome == "error" and not e.at_discovery for e in exp)
    n_refused = sum(e.outcome == "skipped" or (e.outcome == "error" and e.at_discovery) for e in exp)
    found = len(GOOD) + n_scan + n_task_errors
    assert (f"{found} scan(s) found, 0 already stored; assessed {len(GOOD) + n_scan} ok, {n_task_errors} failed, "
            f"{n_refused} skipped/refused input(s)") in first.output
    assert len(scans) == len(GOOD) + n_scan and len(errors) == n_task_errors + n_refused


def test_the_five_good_scans_are_assessed(archive, audited):
    _, _, good = archive
    _, scans, errors, _, _, _ = audited
    for name, (path, uid) in good.items():
        rows = scans[scans["path"] == str(path.resolve())]
        if uid is not None:
            rows = rows[rows["series_uid"] == uid]
        assert len(rows) == 1, (name, scans[["path", "series_uid"]])
        row = rows.iloc[0]
        assert row["region"] == GOOD[name] and 0 <= row["overall"] <= 10, (name, row)
    assert not _records_under(errors, (archive[0] / "good")).shape[0], errors
    # the localizer that came first in its series was left out, not the series
    scout = scans[scans["series_uid"] == good["head_dicom_scout_first"][1]].iloc[0]
    assert "1 localizer/scout image(s) in the series ignored" in scout["warnings"]


@pytest.mark.parametrize("case_id, sub, expect", _expected(), ids=[f"{c}{'/' + s if s else ''}" for c, s, _ in _expected()])
def test_every_catalogue_input_has_its_expected_record(archive, audited, case_id, sub, expect):
    root, built, _ = archive
    _, scans, errors, _, _, _ = audited
    folder = root / "cases" / case_id
    if sub:
        folder = built[case_id] / sub
    got_scans, got_errors = _records_under(scans, folder), _records_under(errors, folder)
    if expect.outcome in ("none", "ignored"):
        assert got_scans.empty and got_errors.empty, (got_scans, got_errors)
        return
    if expect.outcome == "scan":
        assert got_errors.empty and len(got_scans) == 1, (got_scans, got_errors)
        if expect.needle:
            assert expect.needle in got_scans["warnings"].iloc[0], got_scans["warnings"].iloc[0]
        return
    assert got_scans.empty and len(got_errors) == 1, (got_scans, got_errors)
    err = got_errors.iloc[0]
    assert err["kind"] == ("skipped" if expect.outcome == "skipped" else "error"), err
    assert expect.needle in err["reason"], err["reason"]
    assert err["error_type"] == expect.error_type, err


def test_corrupt_slice_is_named_in_the_reason(archive, audited):
    root, built, _ = archive
    _, _, errors, _, _, _ = audited
    bad = sorted(p.name for p in built["05_corrupt_dicom_pixels"].iterdir())[cat.CORRUPT_FILE_INDEX]
    reason = _records_under(errors, built["05_corrupt_dicom_pixels"])["reason"].iloc[0]
    assert reason.endswith(f"[file {bad}]"), reason


def test_non_images_are_counted_not_recorded(archive, audited):
    _, _, _, second, _, _ = audited
    assert second.n_ignored_files == 1  # cases/03_non_image_file/report.pdf


def test_second_run_does_no_work(audited):
    _, _, _, second, before, after = audited
    exp = [e for _, _, e in _expected()]
    found = len(GOOD) + sum(e.outcome == "scan" or (e.outcome == "error" and not e.at_discovery) for e in exp)
    assert (second.n_ok, second.n_failed, second.n_skipped, second.workers) == (0, 0, 0, 0), second
    assert second.n_already == second.n_found == found
    assert after == before


def test_flat_dump_task_reads_only_its_own_series(archive, monkeypatch):
    """Each series of a flat folder is a job carrying its own file list; loading it reads those headers only."""
    import qc.io as qio

    _, _, good = archive
    flat = good["flat_head"][0]
    jobs = {j.series_uid: j for j in discover([flat]).jobs}
    assert set(jobs) == {good["flat_head"][1], good["flat_chest"][1]}
    n_all = sum(1 for _ in flat.iterdir())
    job = jobs[good["flat_head"][1]]
    assert 0 < len(job.files) < n_all and all(Path(f).parent == flat for f in job.files)
    calls = []
    real = qio._read_header
    monkeypatch.setattr(qio, "_read_header", lambda p: calls.append(p) or real(p))
    scan = qio.load_dicom_files(job.files, source=job.path)
    assert len(calls) == len(job.files) and scan.shape[0] == len(job.files)
    assert not any("other series" in w for w in scan.warnings)


def test_localizer_first_in_series_is_dropped_by_qc_assess_too(archive, tmp_path):
    """The same series given to `qc assess` (folder walk in qc.io): assessed, localizer left out."""
    from qc.io import load_scan

    _, _, good = archive
    path, _ = good["head_dicom_scout_first"]
    scan = load_scan(path)
    assert scan.shape[0] == sum(1 for p in path.iterdir() if p.name.startswith("slice_"))
    assert "1 localizer/scout image(s) in the series ignored" in scan.warnings
    ref = load_scan(shutil.copytree(path, tmp_path / "noscout", ignore=shutil.ignore_patterns("0000_scout.dcm")))
    assert np.array_equal(scan.hu, ref.hu)
