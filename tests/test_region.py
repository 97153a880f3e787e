"""Body-region classifier (head / chest / other): shipped logistic model on mask features.

Ground truth: the simulator's region (held-out seeds) and the known anatomy of the real samples in ../shared/data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from detectors import classical, region, weights
from tests.conftest import shared_path


def _decide(scan, model=None):
    m = classical.segment(scan.hu, scan.spacing, scan.fov)
    return region.decide(scan.hu, scan.spacing, m["body_mask"], m["lung_mask"], m["intracranial_mask"], model=model)


@pytest.fixture(scope="module")
def shipped():
    model = region.shipped_region_model()
    if model is None:
        pytest.fail("shipped region.json missing or not verified: run `qc train region`")
    return model


def test_manifest_records_heldout_accuracy_and_calibration(shipped):
    held = weights.model_entry("region")["metrics"]["heldout"]
    assert held["n"] >= 60 and min(held["per_class_n"].values()) >= 20
    # measured at training (qc train region --n 180 --n-test 90): accuracy 1.000, log-loss 0.017, Brier 0.001
    assert held["accuracy"] >= 0.98 and held["log_loss"] < 0.1 and held["brier"] < 0.05


@pytest.mark.parametrize("i", range(6))  # 2 heads, 2 chests, 2 upper abdomens; seeds disjoint from training
def test_fresh_heldout_simulated_scans(shipped, i):
    feats, kind, info = region.simulated_case(i, 41_000)
    probs = shipped.proba(feats)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert max(probs, key=probs.get) == kind, (info, probs)
    assert probs[kind] > 0.8, (info, probs)


@pytest.mark.parametrize("rel, truth", [
    ("head_ct_ge_tilted", "head"), ("abdomen_ct_totalseg/example_ct.nii.gz", "other"),
    ("chest_ct_cropped/ct_cropped.nii.gz", "chest"), ("slices/CT1_UNC.dcm", "chest"),
    ("slices/CT2_UNC.dcm", "head"), ("slices/lungmask_lidc_0.dcm", "chest"),
])
def test_real_samples(shipped, rel, truth):
    from qc.io import load_scan

    d = _decide(load_scan(shared_path(*rel.split("/"))), shipped)
    assert d.region == truth, d.reason
    assert d.probs[truth] > 0.9, d.reason  # measured: >= 0.927 on all seven real samples


def test_assess_reports_region_probabilities_and_model(chest_phantom):
    from qc.pipeline import assess

    res = assess(chest_phantom.scan)
    assert res.region == "chest" and res.region_probs["chest"] > 0.9
    assert res.versions["region"].startswith("region-1 sha256:")
    assert "P(chest)" in res.region_reason


def test_heuristic_when_no_model_is_shipped(monkeypatch, chest_phantom):
    # no verified region.json (e.g. a user deleted it): decide() falls back to the documented heuristic
    monkeypatch.setattr(region, "shipped_region_model", lambda: None)
    d = _decide(chest_phantom.scan)
    assert d.probs is None and d.region == "chest" and d.reason.startswith("chest: ")
    from qc.pipeline import region_version

    assert region_version(d) == "heuristic-1"


def test_qc_train_region_end_to_end(tmp_path):
    from qc.cli import app

    r = CliRunner().invoke(app, ["train", "region", "--n", "6", "--n-test", "3", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    entry = json.loads((tmp_path / "manifest.json").read_text())["models"]["region"]
    assert entry["sha256"] == weights.sha256_file(tmp_path / "region.json")
    model = region.RegionModel.from_json(weights.load_json_model("region", tmp_path / "manifest.json")["model"])
    assert np.asarray(model.coef).shape == (3, len(region.REGION_FEATURES))


def test_no_anatomical_evidence_is_other_whatever_the_model_extrapolates(shipped):
    """Two soft-tissue blocks (legs-like): far outside the training data the linear model may favour a class, but
    without a skull-ring slice or a lung slice the decision is 'other' (the catalogue's region-not-supported case)."""
    hu = np.full((20, 64, 64), -1000.0, np.float32)
    hu[:, 20:44, 8:28] = 40.0
    hu[:, 20:44, 36:56] = 40.0
    m = classical.segment(hu, (2.5, 1.0, 1.0))
    d = region.decide(hu, (2.5, 1.0, 1.0), m["body_mask"], m["lung_mask"], m["intracranial_mask"], model=shipped)
    assert d.region == "other" and d.reason.startswith("neither head nor chest")
