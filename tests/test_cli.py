"""CLI through Typer's CliRunner: every command, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
from typer.testing import CliRunner

from qc.cli import app, main
from tests.conftest import shared_path

runner = CliRunner()


def test_help_and_version():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("assess", "demo", "simulate", "iqms"):
        assert cmd in r.output
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("qc ")


def test_cli_module_imports_no_heavy_libraries():
    code = "import sys, qc.cli; print(sorted(m for m in ('numpy','SimpleITK','torch','pydicom','scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_assess_explain_json_csv(head_files, tmp_path):
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    r = runner.invoke(app, ["assess", str(head_files["dicom"]), "--explain", "--json", str(js), "--csv", str(cs)])
    assert r.exit_code == 0, r.output
    assert "Overall" in r.output and "vertex_margin_mm" in r.output and "mm" in r.output
    d = json.loads(js.read_text())
    assert d["region"] == "head" and 0 <= d["overall"] <= 10
    assert {"overall", "categories", "iqms", "region", "warnings", "versions"} <= set(d)
    row = pd.read_csv(cs)
    assert len(row) == 1 and "score_coverage" in row and "global_noise_index_hu" in row


def test_assess_json_to_stdout(head_files):
    r = runner.invoke(app, ["assess", str(head_files["scan"]), "--json", "-"])
    assert r.exit_code == 0
    assert json.loads(r.output)["region"] == "head"


def test_bad_inputs_exit_2_with_one_line(tmp_path):
    for args, needle in [
        (["assess", str(tmp_path / "missing.nii.gz")], "no such file"),
        (["assess", str(tmp_path)], "empty folder"),
    ]:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert needle in r.output and "Traceback" not in r.output
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1


def test_non_ct_dicom_exit_2(tmp_path, head_phantom):
    from phantoms.dicom import write_dicom_series
    from qc.io import Scan

    s = Scan(hu=head_phantom.scan.hu[:3], spacing=head_phantom.scan.spacing, metadata={}, source="pet")
    write_dicom_series(s, tmp_path / "pet", extra={"Modality": "PT"})
    r = runner.invoke(app, ["assess", str(tmp_path / "pet")])
    assert r.exit_code == 2 and "no CT series" in r.output and "PT" in r.output


def test_abdomen_region_not_supported_exit_2():
    r = runner.invoke(app, ["assess", str(shared_path("abdomen_ct_totalseg", "example_ct.nii.gz"))])
    assert r.exit_code == 2 and "region not supported" in r.output and "Traceback" not in r.output


def test_main_maps_errors_to_exit_codes(tmp_path, capsys):
    assert main(["assess", str(tmp_path / "nope.dcm")]) == 2
    assert main(["assess", "--region", "knee", str(tmp_path)]) == 2  # usage error
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_simulate_command(tmp_path):
    r = runner.invoke(app, ["simulate", "chest", "--out", str(tmp_path / "c"), "--shift-y", "20", "--mas", "50",
                            "--seed", "2", "--dicom"])
    assert r.exit_code == 0, r.output
    truth = json.loads((tmp_path / "c" / "truth.json").read_text())
    assert truth["mas"] == 50 and truth["shift_y_mm"] == 20 and "label_table" in truth
    assert (tmp_path / "c" / "labels.nii.gz").exists() and any((tmp_path / "c" / "dicom").iterdir())
    r = runner.invoke(app, ["simulate", "chest", "--out", str(tmp_path / "x"), "--pitch", "5"])
    assert r.exit_code == 2 and "yaw only" in r.output


def test_demo_command(tmp_path):
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    assert r.output.count("Overall") == 2
    assert "demo head" in r.output and "demo chest" in r.output
    assert "apex_included" in r.output


def test_iqms_command_lists_the_registry():
    from metrics.registry import get_registry

    r = runner.invoke(app, ["iqms", "--markdown"])
    assert r.exit_code == 0
    for name in get_registry():
        assert f"`{name}`" in r.output
