"""Noise2Quality (detectors/noise2quality.py): `qc train n2q` end to end, verified loading, deterministic inference,
the shipped weights against the true SSIM maps of freshly simulated held-out slices, and the two registered IQMs.

Held-out slices use seeds detectors.noise2quality.HELDOUT_SEED0 + 500 + i (40500..), disjoint from the training
seeds (TRAIN_SEED0 + i, 30000..) and from the 40 slices measured into the manifest (40000..40039).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from detectors import noise2quality as n2q
from detectors import weights
from qc.errors import QCInputError


def test_qc_train_n2q_end_to_end_writes_verified_deterministic_weights(tmp_path):
    """The CLI on 2 tiny simulated slices (x 5 dose levels), one training batch: weights and manifest are written,
    the sha256 is recorded and checked on load, and inference gives the same map twice."""
    from qc.cli import app

    r = CliRunner().invoke(app, ["train", "n2q", "--n", "2", "--epochs", "1", "--max-iters", "1", "--n-heldout", "0",
                                 "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "noise2quality.safetensors" in r.output
    manifest = tmp_path / "manifest.json"
    entry = json.loads(manifest.read_text())["models"]["noise2quality"]
    assert entry["sha256"] == weights.sha256_file(tmp_path / "noise2quality.safetensors")
    assert entry["training"]["iterations"] == 1
    assert entry["architecture"]["features"] == n2q.CPU_CONFIG["features"]
    assert entry["architecture"]["alpha"] == n2q.ALPHA == 0.01
    model = n2q.model_from_state(weights.load_tensors("noise2quality", manifest=manifest))
    raw = (tmp_path / "noise2quality.safetensors").read_bytes()
    (tmp_path / "noise2quality.safetensors").write_bytes(raw[:-4] + b"\0\0\0\0")
    with pytest.raises(weights.WeightsError, match="sha256 mismatch"):
        weights.load_tensors("noise2quality", manifest=manifest)

    s = n2q.simulate_levels(n2q.case_params(1, n2q.HELDOUT_SEED0))
    a_map, a_p = n2q.predict_map(s["lows"][0], (2.5, 0.49, 0.49), model=model)
    b_map, b_p = n2q.predict_map(s["lows"][0], (2.5, 0.49, 0.49), model=model)
    assert a_map.shape == (n2q.SIZE, n2q.SIZE) and a_p.shape == (5,)
    assert np.array_equal(a_map, b_map) and np.array_equal(a_p, b_p)
    assert a_p.sum() == pytest.approx(1.0) and np.all(np.abs(a_map) <= 1.0)


def test_ssim_target_follows_the_dose_level():
    """The training target itself: mean true SSIM inside the body rises with the dose level, and the low-dose noise
    added is the requested fraction (variance sigma_full^2 (1/f - 1))."""
    p = n2q.case_params(0, n2q.HELDOUT_SEED0)
    s = n2q.simulate_levels(p)
    case = n2q.make_case(0, n2q.HELDOUT_SEED0)
    means = [float(case["map"][k][case["body"][k]].mean()) for k in range(5)]
    assert all(b > a for a, b in zip(means, means[1:])), means
    soft = (s["full"] > -100) & (s["full"] < 150)
    for k, f in enumerate(n2q.DOSE_LEVELS_PCT):
        added = (s["lows"][k] - s["full"])[soft]
        assert added.std() == pytest.approx(s["sigma_full_hu"] * np.sqrt(100.0 / f - 1.0), rel=0.05)


@pytest.fixture(scope="module")
def shipped():
    model = n2q.shipped_model()
    if model is None:
        pytest.fail("shipped noise2quality.safetensors missing or not in the manifest: run `qc train n2q`")
    return model


HELDOUT_SLICES = 4            # x 5 dose levels = 20 maps (2 chest, 2 head slices)
NRMSE_TARGET = 0.25           # issue 9: NRMSE <= 0.25 on held-out simulated slices (paper: 0.2437)
# The shipped weights (manifest: 40 held-out slices x 5 levels) reach map SSIM 0.918, NRMSE 0.049, body RMSE 0.076,
# dose accuracy 0.715 (Bayes ceiling of this data design 0.776). Six disjoint groups of 4 fresh slices x 5 levels
# (seeds 40500..40523) measured: map SSIM 0.899-0.932, NRMSE 0.040-0.049, body RMSE 0.063-0.077, dose 0.50-0.95
# (20 maps: binomial SD ~0.10). The bounds below sit outside that spread; they pin what was measured, with room.
MAP_SSIM_MIN = 0.85
RMSE_BODY_MAX = 0.10
NRMSE_BODY_MAX = 0.15
DOSE_ACC_MIN = 0.5            # chance is 0.2


@pytest.fixture(scope="module")
def heldout_metrics(shipped):
    data = {}
    cases = [n2q.make_case(500 + i, n2q.HELDOUT_SEED0) for i in range(HELDOUT_SLICES)]
    for k in cases[0]:
        data[k] = np.concatenate([c[k] for c in cases])
    return n2q.evaluate(shipped, data)


def test_shipped_weights_reach_the_nrmse_target_on_heldout_slices(heldout_metrics):
    m = heldout_metrics
    assert m["n"] == 5 * HELDOUT_SLICES
    assert m["nrmse"] <= NRMSE_TARGET, m
    assert m["map_ssim"] >= MAP_SSIM_MIN, m
    assert m["rmse_body"] <= RMSE_BODY_MAX, m
    assert m["nrmse_body"] <= NRMSE_BODY_MAX, m
    assert m["dose_acc"] >= DOSE_ACC_MIN, m


def test_shipped_manifest_records_heldout_metrics():
    entry = weights.model_entry("noise2quality")
    held = entry["metrics"]["heldout"]
    assert held["n"] >= 100
    assert held["nrmse"] <= NRMSE_TARGET
    assert entry["bytes"] < 5_000_000


def test_volume_inference_is_deterministic_and_in_range(shipped):
    from phantoms import simulate

    ph = simulate("chest", seed=n2q.HELDOUT_SEED0 + 900, matrix=256, z_start=-10.0, z_end=10.0)
    a = n2q.predict_volume(ph.scan.hu, ph.scan.spacing, model=shipped, return_map=True)
    b = n2q.predict_volume(ph.scan.hu, ph.scan.spacing, model=shipped, return_map=True)
    assert np.array_equal(a.pop("map"), b.pop("map"))
    assert a == b
    assert -1.0 <= a["mean_ssim"] <= 1.0
    assert 5.0 <= a["dose_level_pct"] <= 75.0
    assert sum(a["dose_probs"]) == pytest.approx(1.0)


def test_no_body_or_bad_input(shipped):
    air = np.full((4, 64, 64), -1000.0, np.float32)
    assert n2q.predict_volume(air, (2.5, 1.0, 1.0), model=shipped) == dict.fromkeys(
        ("mean_ssim", "dose_level_pct", "dose_probs"))
    with pytest.raises(QCInputError, match="2-D axial slice"):
        n2q.predict_map(np.zeros((4, 64, 64)), (1.0, 1.0), model=shipped)
    with pytest.raises(QCInputError, match="spacing"):
        n2q.predict_map(np.zeros((64, 64)), (0.0, 1.0), model=shipped)


def test_iqms_are_none_without_network_outputs():
    from metrics.learned import n2q_dose_level_pct, n2q_mean_ssim
    from metrics.registry import get_registry

    assert n2q_mean_ssim({}) is None and n2q_dose_level_pct({}) is None
    reg = get_registry()
    assert reg["n2q_mean_ssim"].direction == "higher_is_better" and reg["n2q_mean_ssim"].unit == "1"
    assert reg["n2q_dose_level_pct"].unit == "%"


def test_assess_with_networks_reports_n2q_iqms_model_version_and_html_map(shipped, tmp_path):
    """`qc assess --networks` feeds the network's outputs into the registered IQMs (same values as calling the
    network directly), names the weights in the JSON versions and puts the predicted map in the HTML report;
    without --networks the IQMs are not measured and the report has no map."""
    from phantoms import simulate
    from phantoms.simulate import write_phantom
    from qc.html_report import add_html
    from qc.io import load_scan
    from qc.pipeline import assess

    ph = simulate("head", seed=n2q.HELDOUT_SEED0 + 901, z_start=0.0, z_end=20.0)
    path = write_phantom(ph, tmp_path / "head")["scan"]
    scan = load_scan(path)
    direct = n2q.predict_volume(scan.hu, scan.spacing, model=shipped)
    on = assess(path, region="head", networks=True)
    assert on.iqms["n2q_mean_ssim"].value == pytest.approx(direct["mean_ssim"], rel=1e-6)
    assert on.iqms["n2q_dose_level_pct"].value == pytest.approx(direct["dose_level_pct"], rel=1e-6)
    assert f"sha256:{weights.model_entry('noise2quality')['sha256'][:12]}" in on.versions["noise2quality"]
    assert 'alt="Noise2Quality predicted SSIM map"' in add_html(on, path, tmp_path / "on.html").read_text()
    off = assess(path, region="head", networks=False)
    assert off.iqms["n2q_mean_ssim"].value is None and off.iqms["n2q_dose_level_pct"].value is None
    assert "Noise2Quality" not in add_html(off, path, tmp_path / "off.html").read_text()
