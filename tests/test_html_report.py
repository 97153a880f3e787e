"""Self-contained HTML reports (qc.html_report): content checks, and rendering in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qc.audit import AuditJob, build_record, model_version
from qc.html_report import add_html, explain_table, result_from_json, write_group_report, write_scan_report
from qc.store import Store

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _render(html_file: Path, tmp: Path) -> tuple[Path, str]:
    """Screenshot (1200x1600) and DOM of a local HTML file in headless Chromium."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed")
    png = tmp / (html_file.stem + ".png")
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp / 'chromium-profile'}"]
    url = html_file.resolve().as_uri()
    subprocess.run(common + [f"--screenshot={png}", "--window-size=1200,1600", url],
                   capture_output=True, timeout=120, check=False)
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120, check=False).stdout
    assert png.is_file() and png.stat().st_size > 10_000, "no screenshot"
    return png, dom


def _pixels(png: Path):
    import matplotlib.image as mimage

    rgb = mimage.imread(png)[..., :3]
    return float(rgb.std()), float((rgb.mean(axis=2) < 0.5).mean())


def _text(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def _self_contained(text: str) -> None:
    assert "<script" not in text and "<link" not in text
    assert not re.search(r'(src|href)\s*=\s*"(https?:|file:|//)', text)


@pytest.fixture(scope="module")
def assessed(tmp_path_factory):
    """Four small scans (2 head, 2 chest; one head 30 mm too low, one chest at low dose), assessed in-process."""
    from phantoms import simulate, write_phantom
    from qc.pipeline import assess

    root = tmp_path_factory.mktemp("html_scans")
    out = []
    for i, (reg, kw) in enumerate([("head", {}), ("head", {"shift_y": 30.0}), ("chest", {}),
                                   ("chest", {"mas": 20.0})]):
        path = write_phantom(simulate(reg, seed=20 + i, matrix=128, **kw), root / f"{reg}_{i}")["scan"]
        out.append((path, assess(path)))
    return out


@pytest.fixture(scope="module")
def store(assessed, tmp_path_factory):
    """An audit store holding those four assessments (the rows `qc audit` writes) and one error."""
    path = tmp_path_factory.mktemp("html_store") / "audit.duckdb"
    mv = model_version(None)
    with Store(path) as st:
        for i, (p, res) in enumerate(assessed):
            job = AuditJob(source_id=f"sha256:{i:064x}", path=str(p), kind="file",
                           overrides={"protocol": ("Head routine", "Head routine", "Chest low dose", "Chest low dose")[i],
                                      "study_date": f"2026-0{i + 1}-15"})
            st.add_scan(build_record(job, res.to_json_dict(), mv))
        st.add_error(f"sha256:{9:064x}@{mv}", f"sha256:{9:064x}", mv, "/data/broken.nii.gz",
                     "cannot read image header (corrupt or truncated file)", "QCInputError")
    return path


def test_result_json_round_trip(assessed):
    _, res = assessed[1]
    back = result_from_json(res.to_json_dict())
    assert back.overall == res.overall and back.region == res.region
    assert {n: c.score for n, c in back.categories.items()} == {n: c.score for n, c in res.categories.items()}
    assert back.worst_term()[1].iqm == res.worst_term()[1].iqm
    assert explain_table(back) == explain_table(res)


def test_scan_report_content_and_rendering(assessed, tmp_path):
    path, res = assessed[1]  # head, table 30 mm low: a positioning failure
    out = write_scan_report(path, res, tmp_path / "scan.html")
    html = out.read_text()
    _self_contained(html)
    # the three orthogonal views, plus the Noise2Quality map when the networks ran (the default)
    n2q_ran = str(res.versions.get("noise2quality", "")).startswith("noise2quality-")
    assert html.count("data:image/png;base64,") == 1 + n2q_ran
    png, dom = _render(out, tmp_path)
    text = _text(dom)
    assert f"{res.overall:.2f} / 10" in text
    for name, cat in res.categories.items():
        assert name in text
        if cat.score is not None:
            assert f"{cat.score:.2f}" in text
        for t in cat.terms:
            assert t.iqm in text and f"{t.contribution:+.3f}" in text
    assert "centering_offset_vertical_mm" in text and "Costs the most" in text
    for w in res.warnings:
        assert w.split(":")[0] in text
    std, dark = _pixels(png)
    assert std > 0.1 and dark > 0.05, (std, dark)  # the black CT background of the three views is on screen


def test_add_html_and_missing_scan(assessed, tmp_path):
    path, res = assessed[2]
    out = add_html(res, path, tmp_path / "assess.html")
    assert "data:image/png;base64," in out.read_text() and f"{res.overall:.2f} / 10" in out.read_text()
    gone = write_scan_report(tmp_path / "moved.nii.gz", res, tmp_path / "gone.html")
    text = gone.read_text()
    assert "images not available" in text and "no such file" in text and f"{res.overall:.2f} / 10" in text


def test_group_report_content_and_rendering(store, assessed, tmp_path):
    out = write_group_report(store, tmp_path / "group.html")
    html = out.read_text()
    _self_contained(html)
    assert html.count("data:image/png;base64,") >= 5  # 2 box-plot panels, control chart, failure rates, scatter
    for section in ("Scores per protocol", "Scores per scanner", "Control chart", "Failure rate per IQM",
                    "water-equivalent diameter"):
        assert section in html
    png, dom = _render(out, tmp_path)
    text = _text(dom)
    overall = [r.overall for _, r in assessed]
    assert f"{sum(overall) / len(overall):.2f}" in text
    assert "Head routine" in text and "Chest low dose" in text
    assert "corrupt or truncated" in text and "/data/broken.nii.gz" in text
    low = min(assessed, key=lambda a: a[1].overall)
    assert str(low[0]) in text  # the worst scan is listed
    std, dark = _pixels(png)
    assert std > 0.05 and dark > 0.005, (std, dark)


def test_empty_store_report(tmp_path):
    p = tmp_path / "empty.duckdb"
    Store(p).close()
    text = write_group_report(p, tmp_path / "empty.html").read_text()
    assert "no scans in the store yet" in text
