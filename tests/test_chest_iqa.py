"""Chest CT-IQA 3-D VGG (detectors/chest_iqa.py): `qc train chest-iqa` end to end, verified loading,
deterministic inference, and the shipped weights on freshly simulated held-out chest slabs.

Held-out cases use seeds detectors.chest_iqa.HELDOUT_SEED0 + i (20000..), disjoint from the training seeds
(TRAIN_SEED0 + i, 10000..10479).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from detectors import chest_iqa, weights


def test_qc_train_chest_iqa_end_to_end_writes_verified_deterministic_weights(tmp_path):
    """The CLI on 4 tiny simulated slabs (one per kernel x dose), 3 training batches: weights and manifest are
    written, the sha256 is recorded and checked on load, and inference gives the same outputs twice."""
    from qc.cli import app

    r = CliRunner().invoke(app, ["train", "chest-iqa", "--n", "4", "--epochs", "1", "--max-iters", "3",
                                 "--n-heldout", "0", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "chest_iqa.safetensors" in r.output
    manifest = tmp_path / "manifest.json"
    entry = json.loads(manifest.read_text())["models"]["chest_iqa"]
    assert entry["sha256"] == weights.sha256_file(tmp_path / "chest_iqa.safetensors")
    assert entry["training"]["iterations"] == 1  # 4 cases, batch 8: one batch per epoch, one epoch
    assert entry["architecture"]["widths"] == list(chest_iqa.CPU_WIDTHS)
    arch = entry["architecture"]
    assert arch["in_ch"] == 5 and arch["abs_first"] and arch["masked_pool"]  # the dose fixes are what is trained
    assert list(chest_iqa.LOSS_WEIGHTS.values()) == [50.0, 50.0, 5.0, 1.0]
    model = chest_iqa.model_from_state(weights.load_tensors("chest_iqa", manifest=manifest))
    # a tampered file is refused before it is parsed
    raw = (tmp_path / "chest_iqa.safetensors").read_bytes()
    (tmp_path / "chest_iqa.safetensors").write_bytes(raw[:-4] + b"\0\0\0\0")
    with pytest.raises(weights.WeightsError, match="sha256 mismatch"):
        weights.load_tensors("chest_iqa", manifest=manifest)

    ph = chest_iqa.simulate_slab(chest_iqa.HELDOUT_SEED0, mas=30, kernel="sharp", matrix=256, slice_mm=5.0)
    a = chest_iqa.predict_volume(ph.scan.hu, ph.scan.spacing, model=model)
    b = chest_iqa.predict_volume(ph.scan.hu, ph.scan.spacing, model=model)
    assert a == b
    assert set(a) == {"window_prob_lung", "dose_prob_low", "snr_pred", "brisque_pred"}
    assert all(np.isfinite(v) for v in a.values())


@pytest.fixture(scope="module")
def shipped():
    model = chest_iqa.shipped_model()
    if model is None:
        pytest.fail("shipped chest_iqa.safetensors missing or not in the manifest: run `qc train chest-iqa`")
    return model


HELDOUT_N = 6
# The shipped weights (manifest: 200 held-out slabs, window 1.000, dose 0.970) get these 6 cases right; one dose miss
# in 6 is within the measured error rate (0.03; P(>= 2 misses in 6) ~ 1 %), so the test allows it rather than
# pinning today's exact predictions.
DOSE_MIN = 5


@pytest.fixture(scope="module")
def heldout_predictions(shipped):
    """6 freshly simulated held-out slabs (kernel x dose balanced, random matrix / slice / patient)."""
    rows = []
    for i in range(HELDOUT_N):
        p = chest_iqa.case_params(i, chest_iqa.HELDOUT_SEED0)
        ph = chest_iqa.simulate_slab(p["seed"], mas=p["mas"], kernel=p["kernel"], matrix=p["matrix"],
                                     slice_mm=p["slice_mm"])
        rows.append((p, chest_iqa.predict_volume(ph.scan.hu, ph.scan.spacing, model=shipped)))
    return rows


def test_shipped_weights_window_and_dose_on_heldout_slabs(heldout_predictions):
    window_ok = [(o["window_prob_lung"] > 0.5) == (p["kernel"] == "sharp") for p, o in heldout_predictions]
    dose_ok = [(o["dose_prob_low"] > 0.5) == (p["mas"] == 30) for p, o in heldout_predictions]
    assert all(window_ok), heldout_predictions
    assert sum(dose_ok) >= DOSE_MIN, heldout_predictions


def test_shipped_outputs_in_valid_ranges(heldout_predictions):
    for _, o in heldout_predictions:
        assert 0.0 <= o["window_prob_lung"] <= 1.0 and 0.0 <= o["dose_prob_low"] <= 1.0
        assert o["snr_pred"] > 0  # SNR of HU + 1024 over homogeneous blocks is positive
        assert np.isfinite(o["brisque_pred"])


def test_shipped_manifest_records_heldout_metrics():
    entry = weights.model_entry("chest_iqa")
    held = entry["metrics"]["heldout"]
    assert held["n"] >= 150
    # issue 9: window >= 0.95 and dose >= 0.90 for the 3-D VGG (measured: window 1.000, dose 0.970, n = 200)
    assert held["window_acc"] >= 0.95 and held["dose_acc"] >= 0.90
    assert entry["bytes"] < 3_000_000


def test_no_body_gives_none(shipped):
    air = np.full((4, 64, 64), -1000.0, np.float32)
    assert chest_iqa.predict_volume(air, (2.5, 1.0, 1.0), model=shipped) == dict.fromkeys(
        ("window_prob_lung", "dose_prob_low", "snr_pred", "brisque_pred"))


def test_assess_with_networks_reports_chest_iqa_iqms_and_model_version(shipped):
    """`qc assess --networks` feeds the network's four outputs into the registered IQMs (same values as
    calling the network directly) and names the weights in the JSON versions; without it they are not measured."""
    from qc.pipeline import assess

    p = chest_iqa.case_params(1, chest_iqa.HELDOUT_SEED0)
    ph = chest_iqa.simulate_slab(p["seed"], mas=p["mas"], kernel=p["kernel"], matrix=p["matrix"], slice_mm=p["slice_mm"])
    direct = chest_iqa.predict_volume(ph.scan.hu, ph.scan.spacing, model=shipped)
    on = assess(ph.scan, region="chest", networks=True)
    pairs = {"chest_iqa_window_prob_lung": "window_prob_lung", "chest_iqa_dose_prob_low": "dose_prob_low",
             "chest_iqa_snr": "snr_pred", "chest_iqa_brisque": "brisque_pred"}
    for iqm, key in pairs.items():
        assert on.iqms[iqm].value == pytest.approx(direct[key], rel=1e-6), iqm
    sha = weights.model_entry("chest_iqa")["sha256"]
    assert f"sha256:{sha[:12]}" in on.versions["chest_iqa"]
    off = assess(ph.scan, region="chest", networks=False)
    assert all(off.iqms[iqm].value is None for iqm in pairs) and "chest_iqa" not in off.versions
