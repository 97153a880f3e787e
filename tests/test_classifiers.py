"""Kernel and dose-level classifiers (detectors.classifiers) and the safe weights loader (detectors.weights).

Ground truth: simulated chest slabs whose kernel and mAs are known, with seeds disjoint from the training seeds
(training used make_dataset seed0 1 and 2 -> simulation seeds 100003.. and 200006..; these use 9_000_000..).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detectors import classifiers, weights


def test_tiny_training_end_to_end_writes_verified_loadable_weights(tmp_path):
    """The code path of `qc train classifiers` on 8 + 8 tiny cases (128 matrix: some have too little soft tissue
    for the features and are dropped): weights and manifest written, sha256 recorded, the file loads back
    through the verified loader and gives probabilities and estimates in their ranges."""
    report = classifiers.train_and_save(n=16, seed=5, out_dir=tmp_path, progress=False, matrices=(128,))
    assert set(report) == {"kernel", "dose2", "dose5"}
    for m in report.values():
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["n_test"] >= 2 and np.isfinite(m["test_log_loss"])
    manifest = tmp_path / "manifest.json"
    entry = json.loads(manifest.read_text())["models"]["classifiers"]
    assert entry["sha256"] == weights.sha256_file(tmp_path / "classifiers.json") and entry["metrics"] == json.loads(
        json.dumps(report))
    models = classifiers.load_models(weights.load_json_model("classifiers", manifest=manifest))
    feats = {"log_noise": np.log(20.0), "wed_cm": 28.0, "log_pixel": np.log(0.7), "log_slice": np.log(2.5),
             "noise_rho1": 0.5, "log_resid_sd": np.log(18.0)}
    out = classifiers.predict(models, feats)
    assert 0.0 <= out["kernel_prob_sharp"] <= 1.0 and 0.0 <= out["dose_prob_low_30mas"] <= 1.0
    assert out["estimated_effective_mas"] > 0 and 5.0 <= out["dose5_expected_pct"] <= 75.0


def test_tampered_weights_are_refused(tmp_path):
    src = weights.WEIGHTS_DIR
    if not (src / "classifiers.json").exists():
        pytest.fail("shipped classifiers.json missing: run `qc train classifiers`")
    shutil.copy(src / "classifiers.json", tmp_path / "classifiers.json")
    shutil.copy(src / "manifest.json", tmp_path / "manifest.json")
    weights.load_json_model("classifiers", manifest=tmp_path / "manifest.json")  # intact copy loads
    data = json.loads((tmp_path / "classifiers.json").read_text())
    data["models"]["kernel"]["intercept"] = [42.0]
    (tmp_path / "classifiers.json").write_text(json.dumps(data))
    with pytest.raises(weights.WeightsError, match="sha256 mismatch"):
        weights.load_json_model("classifiers", manifest=tmp_path / "manifest.json")
    with pytest.raises(weights.WeightsError, match="not in the weights manifest"):
        weights.load_json_model("no_such_model", manifest=tmp_path / "manifest.json")


class _Exploit:
    """Unpickling this runs code (writes a file) - what a malicious checkpoint does."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_checkpoint_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    import torch

    marker = tmp_path / "marker.txt"
    bad = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _Exploit(marker)}, bad)
    with pytest.raises(weights.WeightsError, match="refused"):
        weights.load_user_checkpoint(bad)
    assert not marker.exists()
    good = tmp_path / "ok.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, good)
    assert torch.equal(weights.load_user_checkpoint(good)["w"], torch.ones(3))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(weights.WeightsError, match="not a valid safetensors"):
        weights.load_user_checkpoint(tmp_path / "junk.safetensors")


# (kernel, mAs, matrix, slice mm, seed): both kernels, both dose levels, three matrices, three slice widths
HELD_OUT = [("smooth", 30, 256, 2.5, 9_000_001), ("smooth", 50, 384, 5.0, 9_000_002), ("sharp", 30, 512, 1.25, 9_000_003),
            ("sharp", 50, 256, 5.0, 9_000_004), ("smooth", 50, 512, 1.25, 9_000_005), ("sharp", 30, 384, 2.5, 9_000_006)]


@pytest.fixture(scope="module")
def shipped():
    models = classifiers.shipped_models()
    if models is None:
        pytest.fail("shipped classifiers missing or not verified: run `qc train classifiers`")
    return models


def test_shipped_classifiers_on_held_out_simulated_chests(shipped):
    """Kernel right on all 6 held-out scans (shipped held-out accuracy 1.0); 30 vs 50 mAs right on at least 5 of 6
    (shipped held-out accuracy >= 0.95, see the manifest); the effective-mAs estimate within 35 % of the truth."""
    kernel_ok = dose_ok = 0
    for kernel, mas, matrix, slice_mm, seed in HELD_OUT:
        feats, _truth = classifiers.simulate_case(seed, mas=mas, kernel=kernel, matrix=matrix, slice_mm=slice_mm)
        out = classifiers.predict(shipped, feats)
        kernel_ok += (out["kernel_prob_sharp"] > 0.5) == (kernel == "sharp")
        dose_ok += (out["dose_prob_low_30mas"] > 0.5) == (mas == 30)
        assert abs(np.log(out["estimated_effective_mas"] / mas)) < np.log(1.35), (kernel, mas, matrix, out)
    assert kernel_ok == len(HELD_OUT)
    assert dose_ok >= len(HELD_OUT) - 1


def test_shipped_manifest_records_held_out_accuracy(shipped):
    entry = weights.model_entry("classifiers")
    m = entry["metrics"]
    assert m["kernel"]["test_accuracy"] >= 0.99 and m["dose2"]["test_accuracy"] >= 0.95
    assert m["kernel"]["n_test"] >= 100 and m["dose2"]["n_test"] >= 50
    assert "phantoms.simulate" in entry["training_data"] and entry["command"].startswith("qc train classifiers")


def test_assess_reports_classifier_iqms_and_model_version(shipped):
    from phantoms import simulate
    from qc.pipeline import assess

    ph = simulate("chest", seed=9_000_010, matrix=256, slice_mm=2.5, mas=50, kernel="sharp")
    res = assess(ph.scan, region="chest")
    assert res.iqms["kernel_prob_sharp"].value > 0.5 and res.iqms["kernel_prob_sharp"].unit == "probability"
    assert res.iqms["dose_prob_low_30mas"].value < 0.5
    assert res.versions["classifiers"].startswith("classifiers-1 sha256:")
