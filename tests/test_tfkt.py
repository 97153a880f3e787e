"""TFKT perceptual quality network (detectors/tfkt.py): `qc train perceptual` end to end, LDCTIQA-format input,
the shipped weights' challenge score on held-out simulated slices, deterministic volume inference, the IQM."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tifffile")

from detectors import tfkt, weights  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    model = tfkt.shipped_model()
    if model is None:
        pytest.skip("shipped TFKT weights not present (run `qc train perceptual`)")
    return model


def _tiny_folder(folder, n=6, csv_header=True):
    """A tiny LDCTIQA-format folder: one noise-free simulated slice with n noise levels (no streaks)."""
    import tifffile

    from phantoms.simulate import shaped_noise

    base = tfkt.base_slice(tfkt.TRAIN_SEED0 + 999)
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, sd in enumerate(np.geomspace(20, 120, n)):
        v = tfkt.hu_to_ldctiqa(base["hu"] + shaped_noise((1, 512, 512), "hann", rng)[0] * sd)
        tifffile.imwrite(str(folder / f"s{i}.tiff"), v)
        rows.append(f"s{i}.tiff,{float(tfkt.true_quality_score(sd)):.2f}")
    (folder / "scores.csv").write_text(("file,score\n" if csv_header else "") + "\n".join(rows) + "\n")
    return folder


def test_train_perceptual_end_to_end_writes_loadable_weights(tmp_path):
    from typer.testing import CliRunner

    from qc.cli import app

    data = _tiny_folder(tmp_path / "data")
    out = tmp_path / "w"
    r = CliRunner().invoke(app, ["train", "perceptual", "--data", str(data), "--n-bases", "1", "--epochs", "1",
                                 "--pretrain-epochs", "1", "--max-iters", "2", "--no-real",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    entry = json.loads((out / "manifest.json").read_text())["models"]["tfkt"]
    assert entry["sha256"] == weights.sha256_file(out / "tfkt.safetensors")
    assert entry["training"]["iterations"] == 1  # 5 training slices (1 of 6 held out) = one batch of 8
    assert entry["pretraining"]["iterations"] == 1  # 1 base x 24 crops = one batch of 16 per epoch
    assert entry["bytes"] < 8_000_000
    model = tfkt.model_from_state(weights.load_tensors("tfkt", manifest=out / "manifest.json"))
    s = tfkt.score_slices(model, np.full((1, 512, 512), 0.5, np.float32))
    assert s.shape == (1,) and 0.0 <= s[0] <= 4.0
    assert tfkt.load_weights(out / "tfkt.safetensors") is not None


def test_ldctiqa_folder_formats_and_bad_input(tmp_path):
    from qc.errors import QCInputError

    d = _tiny_folder(tmp_path / "a", n=3, csv_header=False)  # headerless file,score
    got = tfkt.read_ldctiqa_folder(d)
    assert got["images"].shape == (3, 512, 512) and len(got["scores"]) == 3
    (d / "scores.json").write_text(json.dumps({"s0.tiff": 4.0, "s1.tiff": 2.0, "s2.tiff": 0.0}))
    assert list(tfkt.read_ldctiqa_folder(d)["scores"]) == [4.0, 2.0, 0.0]  # scores.json wins
    with pytest.raises(QCInputError, match="not found"):
        (d / "scores.json").write_text(json.dumps({"s0.tiff": 1, "s1.tiff": 1, "../x.tiff": 1}))
        tfkt.read_ldctiqa_folder(d)
    (d / "scores.json").write_text(json.dumps({"s0.tiff": 1, "s1.tiff": 1, "s2.tiff": 7}))
    with pytest.raises(QCInputError, match="outside 0-4"):
        tfkt.read_ldctiqa_folder(d)
    import tifffile

    tifffile.imwrite(str(d / "s2.tiff"), np.full((512, 512), 300.0, np.float32))  # HU, not [0, 1]
    (d / "scores.json").write_text(json.dumps({"s0.tiff": 1, "s1.tiff": 1, "s2.tiff": 2}))
    with pytest.raises(QCInputError, match=r"\[0, 1\]"):
        tfkt.read_ldctiqa_folder(d)
    with pytest.raises(QCInputError):
        tfkt.read_ldctiqa_folder(tmp_path / "missing")


def test_challenge_score_and_rule():
    s = tfkt.challenge_score([1, 2, 3, 4], [0, 1, 2, 3])
    assert s["overall"] == pytest.approx(3.0)
    assert tfkt.true_quality_score(27.0) == pytest.approx(4.0)
    assert tfkt.true_quality_score(110.0) == pytest.approx(0.0, abs=1e-9)
    assert tfkt.true_quality_score(30.0, 40.0) == pytest.approx(tfkt.true_quality_score(50.0))


def test_ldctiqa_normalisation_matches_the_real_samples():
    """v = (HU + 1024) / 1400: the fat and soft-tissue peaks of the real score-4 sample sit at -100 and +60 HU."""
    from tests.conftest import shared_path

    d = tfkt.read_ldctiqa_folder(shared_path("ldctiqa_samples"))
    v = d["images"][d["names"].index("test016.tiff")].astype(np.float32)
    h, e = np.histogram(v[(v > 0.55) & (v < 0.9)], bins=70, range=(0.55, 0.9))
    centres = (e[:-1] + e[1:]) / 2
    fat = centres[np.argmax(np.where(centres < 0.72, h, 0))] * tfkt.HU_WIDTH + tfkt.HU_MIN
    soft = centres[np.argmax(np.where(centres > 0.72, h, 0))] * tfkt.HU_WIDTH + tfkt.HU_MIN
    assert -130 < fat < -70 and 30 < soft < 90


# Measured with the shipped weights on these 12 slices (2 disjoint held-out phantom slices x 6 distortions, the
# first 2 bases of the manifest's held-out set): see HELDOUT_12 below; the manifest holds the full held-out set.
HELDOUT_12 = 2.870  # measured: PLCC 0.987, SRCC 0.977, KRCC 0.907 (ceiling of the rule itself: 2.901)


@pytest.fixture(scope="module")
def heldout12(tmp_path_factory):
    bases = tfkt.simulated_bases(2, tfkt.HELDOUT_SEED0, all_fields=False)
    folder = tmp_path_factory.mktemp("heldout12")
    tfkt.write_ldctiqa_set(folder, bases, seed=tfkt.HELDOUT_SEED0)
    return tfkt.read_ldctiqa_folder(folder)


def test_shipped_weights_challenge_score_on_heldout_slices(shipped, heldout12):
    m, pred = tfkt.evaluate(shipped, heldout12)
    got = m["vs_labels"]
    assert got["n"] == 12
    assert got["overall"] >= HELDOUT_12 - 0.05, got
    entry = weights.model_entry("tfkt")
    full = entry["metrics"]["heldout"]["vs_labels"]
    assert full["n"] >= 100 and full["overall"] >= 2.0


def test_volume_inference_is_deterministic_and_ranks_dose(shipped):
    from phantoms import simulate

    lo = simulate("chest", seed=5, mas=8, matrix=512, slice_mm=5.0, z_start=-40, z_end=-10).scan
    hi = simulate("chest", seed=5, mas=400, matrix=512, slice_mm=5.0, z_start=-40, z_end=-10).scan
    a = tfkt.predict_volume(lo.hu, lo.spacing, model=shipped)
    b = tfkt.predict_volume(lo.hu, lo.spacing, model=shipped)
    assert a == b and len(a["slice_scores"]) == lo.shape[0]
    c = tfkt.predict_volume(hi.hu, hi.spacing, model=shipped)
    assert 0.0 <= a["tfkt_quality_score"] < c["tfkt_quality_score"] <= 4.0
    air = np.full((3, 64, 64), -1000.0, np.float32)
    assert tfkt.predict_volume(air, (1, 1, 1), model=shipped)["tfkt_quality_score"] is None


def test_select_slices_spreads_over_the_body():
    hu = np.full((40, 64, 64), -1000.0, np.float32)
    hu[10:30, 16:48, 16:48] = 40.0
    idx = tfkt.select_slices(hu, 12)
    assert len(idx) == 12 and idx.min() == 10 and idx.max() == 29


def test_assess_with_networks_reports_tfkt(shipped):
    from phantoms import simulate
    from qc.pipeline import assess

    scan = simulate("head", seed=2, matrix=512, slice_mm=5.0, z_start=0, z_end=30).scan
    on = assess(scan, region="head", networks=True)
    direct = tfkt.predict_volume(scan.hu, scan.spacing, model=shipped)["tfkt_quality_score"]
    assert on.iqms["tfkt_quality_score"].value == pytest.approx(direct, rel=1e-6)
    assert f"sha256:{weights.model_entry('tfkt')['sha256'][:12]}" in on.versions["tfkt"]
    off = assess(scan, region="head", networks=False)
    assert off.iqms["tfkt_quality_score"].value is None and "tfkt" not in off.versions
    assert "classifiers" not in off.versions  # head scans do not run the chest feature classifiers
