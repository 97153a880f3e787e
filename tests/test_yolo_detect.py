"""YOLO landmark + artifact detector (detectors/yolo_detect.py): offline training path, shipped weights, ground truth.

* The training test runs ``train_and_save`` (what ``qc train det`` runs) for one epoch on 6 tiny simulated volumes
  (head landmarks) and on 4 slices (artifacts) into a temporary folder with its own manifest, with every socket
  connection and DNS lookup made to fail: it must train and write sha256-listed safetensors that load and give
  deterministic detections.
* The accuracy test uses the shipped weights on three freshly simulated head and chest volumes (seeds
  ``TEST_SEED0`` + i: used neither for training nor for the manifest's held-out metrics; 256 matrix, the held-out
  design's random slice thickness, pose and scan range) and asserts the per-landmark z MAE <= 3 mm.
* The landmark truth (analytic anatomy) is checked against the label volume of a 1 mm-slice phantom.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from detectors import weights
from detectors import yolo_detect as yd
from qc.errors import QCInputError
from tests.offline import refuse_network

MAE_MM = 3.0


def test_offline_setup_sets_environment_and_font(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    monkeypatch.delenv("QC_YOLO_CONFIG_DIR", raising=False)
    default = yd.config_dir()
    assert Path(__file__).resolve().parents[1] not in default.parents  # never inside the repository
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "cfg"))  # restored after the test
    yd.ultralytics_offline()
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "False"
    assert os.environ["YOLO_VERBOSE"] == "False"
    assert (tmp_path / "cfg" / "Ultralytics" / "Arial.ttf").stat().st_size > 100_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-epoch head landmark model (6 volumes) and a 1-epoch artifact model (2 slices per region), 64 matrix,
    trained with every socket refused."""
    out = tmp_path_factory.mktemp("yolo_weights")
    mp = pytest.MonkeyPatch()
    calls: list = []
    refuse_network(mp, calls)
    try:
        lm = yd.train_and_save("head", n_train=6, epochs=1, batch=4, seed=7, n_heldout=2, out_dir=out, matrix=64,
                               log=lambda _m: None)
        art = yd.train_and_save("artifacts", n_train=2, epochs=1, batch=4, seed=7, n_heldout=0, out_dir=out,
                                matrix=64, log=lambda _m: None)
    finally:
        mp.undo()
    return out, {"head": lm, "artifacts": art}, calls


def test_tiny_training_is_offline_and_writes_verified_loadable_weights(tiny):
    out, entries, calls = tiny
    assert calls == [], f"network access attempted: {calls}"
    manifest = out / "manifest.json"
    models = json.loads(manifest.read_text())["models"]
    for name in ("head", "artifacts"):
        listed = models[f"yolo_{name}"]
        assert listed["sha256"] == weights.sha256_file(out / f"yolo_{name}.safetensors") == entries[name]["sha256"]
        assert listed["classes"] == list(yd.classes(name)) and listed["model_yaml"] == "yolo11n.yaml"
        assert listed["training"]["epochs"] == 1
    assert set(models["yolo_head"]["metrics"]["landmarks_heldout"]["landmarks"]) == set(yd.LANDMARKS["head"])
    assert not list(out.glob("*.pt")), "no pickle checkpoint may be left next to the shipped weights"
    net, _entry = yd.load_model("head", manifest)
    ph, _kw = yd.simulate_landmark_case("head", 99, matrix=64)
    a = yd.detect_landmarks_scan(ph.scan, "head", net=net)
    b = yd.detect_landmarks_scan(ph.scan, "head", net=net)
    assert set(a) == set(yd.LANDMARKS["head"]) and a == b  # deterministic
    art_net, _entry = yd.load_model("artifacts", manifest)
    arts = yd.detect_artifacts(ph.scan.hu[:3], ph.scan.spacing[2], net=art_net)
    assert set(arts) == set(yd.ARTIFACTS) and all(0.0 <= v["score"] <= 1.0 for v in arts.values())
    assert arts == yd.detect_artifacts(ph.scan.hu[:3], ph.scan.spacing[2], net=art_net)


def test_tampered_weights_refused(tiny, tmp_path):
    out, _entries, _calls = tiny
    shutil.copy(out / "manifest.json", tmp_path / "manifest.json")
    data = bytearray((out / "yolo_head.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "yolo_head.safetensors").write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="sha256 mismatch"):
        yd.load_model("head", tmp_path / "manifest.json")


def test_bad_input_is_a_clear_error():
    with pytest.raises(QCInputError, match="region"):
        yd.classes("abdomen")
    with pytest.raises(QCInputError, match="detector"):
        yd.load_model("abdomen")
    with pytest.raises(QCInputError, match="3-D volume"):
        yd.projection_image(np.zeros((1, 64, 64)), (1.0, 1.0, 1.0), [0.0], "head")


# ------------------------------------------------------------------ ground truth against the label volume
def test_landmark_truth_matches_the_label_volume():
    """Analytic landmark z (yd.landmark_points) against the phantom's labels on 1 mm slices: lens centroid, top of
    the body (vertex), lung top (apex) and the lung floor at the lung centre (diaphragm dome) within 1 slice."""
    from phantoms import simulate
    from phantoms.tissues import NAME_TO_LABEL as L

    ph = simulate("head", seed=11, matrix=128, slice_mm=1.0, pitch=8.0, roll=4.0, yaw=5.0, noise=False)
    z = ph.scan.z_positions_mm()
    t = yd.landmark_truth_z(ph.truth, "head")
    lens = ph.labels == L["lens"]
    assert abs(z[np.nonzero(lens)[0]].mean() - t["lens"]) < 1.0
    body_z = z[np.nonzero((ph.labels > 0).reshape(len(z), -1).any(axis=1))[0]]
    assert abs(body_z.max() - t["vertex"]) <= 1.0
    eam = (ph.labels == L["sinus_air"])
    eam[:, :, 40:88] = False  # the ear canals are lateral; the maxillary sinuses are not
    assert abs(z[np.nonzero(eam)[0]].mean() - t["eam"]) < 1.5

    ph = simulate("chest", seed=11, matrix=128, slice_mm=1.0, yaw=4.0, noise=False)
    z = ph.scan.z_positions_mm()
    t = yd.landmark_points(ph.truth, "chest")
    lung = ph.labels == L["lung"]
    assert abs(z[np.nonzero(lung.reshape(len(z), -1).any(axis=1))[0]].max() - t["lung_apex"][0][2]) <= 1.0
    px = ph.truth["pixel_mm"]
    for x, y, zd in t["diaphragm_dome"]:
        col = lung[:, int(round(y / px + 63.5)), int(round(x / px + 63.5))]
        assert abs(z[np.nonzero(col)[0]].min() - zd) <= 1.5


# ------------------------------------------------------------------ shipped weights
@pytest.mark.parametrize("region", ["head", "chest"])
def test_shipped_weights_landmark_mae_on_heldout_volumes(region):
    net = yd.shipped_model(region)
    assert net is not None, f"shipped weights yolo_{region} missing: qc train det --region {region}"
    errs = {k: [] for k in yd.LANDMARKS[region]}
    for i in range(3):
        ph, _kw = yd.simulate_landmark_case(region, yd.TEST_SEED0[region] + i, heldout=True, matrix=256)
        got = yd.detect_landmarks_scan(ph.scan, region, net=net)
        for k, z in yd.landmark_truth_z(ph.truth, region).items():
            assert got[k]["z_mm"] is not None, f"{k} not found"
            errs[k].append(abs(got[k]["z_mm"] - z))
    mae = {k: float(np.mean(v)) for k, v in errs.items()}
    print(f"\n{region} landmark z MAE (mm, n=3): " + ", ".join(f"{k} {v:.2f}" for k, v in mae.items()))
    assert all(v <= MAE_MM for v in mae.values()), mae


def test_streak_coherence_image_shows_inserted_streaks_and_nothing_else():
    """Ground truth: a water disk (noise SD 10 HU, 1 mm pixels) with a 3000 HU metal rod and +25 HU streaks
    (Gaussian cross-section, sigma 1 px: the reconstruction blur) drawn through it at three known angles. The
    streak channel holds 9-25 HU on the rays of the streaks, both sides of the metal (measured 11-13: the residual
    after the 7 mm median, sampled along the ray, keeps about half of a thin streak's peak), |value| <= 6 HU
    (median <= 3) on rays >= 6 deg away from them (noise averaged along the rays: measured median 1.3, max 3.6),
    and is all zero on the same slice without metal."""
    rng = np.random.default_rng(0)
    n, px = 256, 1.0
    yy, xx = np.mgrid[:n, :n].astype(float)
    cy, cx = 120.0, 150.0
    body = np.hypot(yy - 128, xx - 128) < 110
    s = np.where(body, 0.0, -1000.0) + rng.normal(0, 10, (n, n)) * body
    angles = np.deg2rad([20.0, 95.0, 250.0])
    for a in angles:  # distance from the line through (cy, cx) at angle a
        d = np.abs(-(yy - cy) * np.cos(a) + (xx - cx) * np.sin(a))
        s += 25.0 * np.exp(-0.5 * d**2) * body
    no_metal = s.copy()
    s[np.hypot(yy - cy, xx - cx) <= 3.0] = 3000.0
    img = yd.streak_coherence_image(s, px)
    assert not yd.streak_coherence_image(no_metal, px).any()

    def at(theta, r=28.0):
        return float(img[int(round(cy + r * np.sin(theta))), int(round(cx + r * np.cos(theta)))])

    on = [at(a + k * np.pi) for a in angles for k in (0, 1)]
    assert min(on) >= 9.0 and max(on) <= 25.0, on
    off_angles = [t for t in np.deg2rad(np.arange(0, 360, 3.0))
                  if min(abs((t - a + np.pi / 2) % np.pi - np.pi / 2) for a in angles) > np.deg2rad(6)]
    off = np.abs([at(t) for t in off_angles])
    assert np.median(off) <= 3.0 and off.max() <= 6.0, (np.median(off), off.max())
