"""ONNX Runtime inference of the shipped networks (detectors/runtime.py) and what `qc assess` runs by default.

* Every ONNX export is listed, sha256-verified and exported from the safetensors that are shipped now (not stale);
  a tampered file is refused.
* The numpy re-implementations that replace torch at assessment time agree with what they replace: linear resize
  (torch trilinear), the Gaussian sliding window (MONAI's), YOLO decoding + NMS (ultralytics').
* Each network gives the same outputs from its ONNX export as from torch, on freshly simulated scans (tolerances
  per output below).
* `qc assess` by default runs the networks, does not import torch, and names each model and its version; the YOLO
  landmark margins it reports match the phantom's truth within 3 mm.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from detectors import runtime, weights

NAMES = ("seg_head", "seg_chest", "yolo_head", "yolo_chest", "yolo_artifacts", "yolo_artifacts_b", "chest_iqa",
         "noise2quality", "tfkt")
MARGIN_MM = 3.0  # landmark margin IQM vs the phantom's truth (the landmark z MAE target of issue 6)


@pytest.fixture(scope="module")
def manifest():
    return weights.read_manifest()["models"]


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_is_listed_verified_and_current(name, manifest):
    e = manifest[runtime.onnx_name(name)]
    assert e["source_sha256"] == manifest[name]["sha256"], "stale export: run `qc export-onnx`"
    net = runtime.shipped_onnx(name)
    assert isinstance(net, runtime.OnnxNet)
    # recorded at export on the check inputs, relative to the largest raw output there (random inputs: the chest
    # segmenter's logits reach ~150, YOLO's raw box outputs ~25). float32 weights agree to float rounding: at most 32
    # float32 epsilons (3.8e-6; measured 1e-8..9e-7). YOLO's weights are stored in fp16 (as its safetensors), but batch
    # norm is folded into the convolutions at export and the folded weights are rounded again: at most 5e-3 (~5 fp16
    # epsilons; measured 6e-4..3.8e-3). What that does to the outputs that matter (landmark z, confidences, artifact
    # scores) is bounded in test_yolo_onnx_equals_torch.
    scale = max(1.0, e["torch_max_abs_output"])
    rel = 5e-3 if e["fp16_weights"] else 32 * np.finfo(np.float32).eps
    assert e["onnxruntime_vs_torch_max_abs_diff"] <= rel * scale


def test_tampered_or_stale_export_is_refused(tmp_path, manifest):
    man = tmp_path / "manifest.json"
    shutil.copy(weights.MANIFEST, man)
    for f in ("chest_iqa.safetensors", "chest_iqa.onnx"):
        shutil.copy(weights.WEIGHTS_DIR / f, tmp_path / f)
    assert runtime.shipped_onnx("chest_iqa", man) is not None
    data = json.loads(man.read_text())
    data["models"]["chest_iqa_onnx"]["source_sha256"] = "0" * 64
    man.write_text(json.dumps(data))
    runtime._load.cache_clear()
    assert runtime.shipped_onnx("chest_iqa", man) is None  # exported from other weights
    with pytest.raises(weights.WeightsError, match="exported from other weights"):
        runtime._load("chest_iqa", str(man))
    shutil.copy(weights.MANIFEST, man)
    (tmp_path / "chest_iqa.onnx").write_bytes((tmp_path / "chest_iqa.onnx").read_bytes() + b"x")
    runtime._load.cache_clear()
    with pytest.raises(weights.WeightsError, match="sha256 mismatch"):
        runtime._load("chest_iqa", str(man))


# ------------------------------------------------------------------ numpy replacements of torch code
def test_numpy_resize_equals_torch_trilinear():
    import torch

    from detectors.segmentation import resize_linear

    rng = np.random.default_rng(0)
    for src, dst in (((2, 7, 9, 11), (5, 6, 17)), ((3, 20, 31, 8), (13, 40, 8)), ((1, 4, 4, 4), (4, 4, 4))):
        a = rng.normal(size=src).astype(np.float32)
        ours = resize_linear(a, dst)
        ref = resize_linear(torch.from_numpy(a), dst).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_numpy_sliding_window_matches_monai():
    import torch
    from monai.inferers import sliding_window_inference

    from detectors.segmentation import sliding_window

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(3, 4, 3, padding=1)).eval()
    fn = runtime.TorchFn(net)
    rng = np.random.default_rng(1)
    for shape, roi in (((20, 30, 26), (16, 16, 16)), ((9, 14, 12), (16, 16, 16)), ((40, 24, 24), (16, 24, 24))):
        x = rng.normal(size=(1, 2) + shape).astype(np.float32)
        ours = sliding_window(lambda p: fn(p)[0], x, roi)
        with torch.inference_mode():
            ref = sliding_window_inference(torch.from_numpy(x), roi_size=roi, sw_batch_size=1, predictor=net,
                                           overlap=0.25, mode="gaussian", padding_mode="constant", cval=0.0).numpy()
        # single windows are exact; overlapping ones differ only by the Gaussian weights' float rounding
        np.testing.assert_allclose(ours, ref, atol=2e-3, err_msg=f"shape {shape} roi {roi}")


def test_yolo_decode_and_nms_equal_ultralytics():
    import torch

    from detectors import yolo_detect as yd

    yd.ultralytics_offline()
    from ultralytics.utils.nms import non_max_suppression

    net = yd.load_model("chest")[0]
    ex = yd.export_module(net)
    rng = np.random.default_rng(2)
    ph, _ = yd.simulate_landmark_case("chest", yd.TEST_SEED0["chest"] + 7, heldout=True, matrix=128)
    img, _geom = yd.frame_projection(*yd.projection_image(ph.scan.hu, ph.scan.spacing, ph.scan.z_positions_mm(),
                                                          "chest"), "chest")
    x = np.stack([img, rng.integers(0, 255, img.shape).astype(np.uint8)]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    with torch.inference_mode():
        boxes, scores = ex(torch.from_numpy(x))
        ref = net(torch.from_numpy(x))
        ref = ref[0] if isinstance(ref, (list, tuple)) else ref
        ref_det = non_max_suppression(ref, conf_thres=0.001, iou_thres=0.5, max_det=50, multi_label=True)
    meta = yd.onnx_meta(net)
    dec = yd.decode_raw(boxes.numpy(), scores.numpy(), x.shape[2], x.shape[3], meta["strides"], meta["reg_max"])
    np.testing.assert_allclose(dec, ref.numpy(), atol=2e-3, rtol=1e-4)
    for p, r in zip(dec, ref_det):
        ours = yd.nms(p)
        r = r.numpy()
        assert len(ours) == len(r)
        np.testing.assert_allclose(ours[:10], r[:10], atol=2e-3, rtol=1e-4)  # same boxes, same order


# ------------------------------------------------------------------ ONNX vs torch on simulated scans
@pytest.fixture(scope="module")
def scans():
    from phantoms import simulate

    return {r: simulate(r, seed=31, matrix=128, slice_mm=2.5) for r in ("head", "chest")}


@pytest.mark.parametrize("region", ["head", "chest"])
def test_segmentation_onnx_equals_torch(region, scans):
    from detectors import segmentation as seg

    s = scans[region].scan
    onnx = seg.segment(s.hu, s.spacing, region, s.fov)
    tor = seg.segment(s.hu, s.spacing, region, s.fov, net=seg.load_model(region)[0])
    for name in onnx:
        a, b = onnx[name], tor[name]
        if a.any() or b.any():
            assert seg.dice(a, b) >= 0.999, name


def test_image_quality_networks_onnx_equal_torch(scans):
    from detectors import chest_iqa, noise2quality, tfkt

    s = scans["chest"].scan
    a = chest_iqa.predict_volume(s.hu, s.spacing, runtime.shipped_onnx("chest_iqa"))
    b = chest_iqa.predict_volume(s.hu, s.spacing, chest_iqa.shipped_model())
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-4), k
    for region in ("head", "chest"):
        s = scans[region].scan
        a = noise2quality.predict_volume(s.hu, s.spacing, runtime.shipped_onnx("noise2quality"))
        b = noise2quality.predict_volume(s.hu, s.spacing, noise2quality.shipped_model())
        assert a["mean_ssim"] == pytest.approx(b["mean_ssim"], abs=1e-4)
        assert a["dose_level_pct"] == pytest.approx(b["dose_level_pct"], abs=1e-3)
        a = tfkt.predict_volume(s.hu, s.spacing, runtime.shipped_onnx("tfkt"))
        b = tfkt.predict_volume(s.hu, s.spacing, tfkt.shipped_model())
        assert a["tfkt_quality_score"] == pytest.approx(b["tfkt_quality_score"], abs=1e-4)


@pytest.mark.parametrize("region", ["head", "chest"])
def test_yolo_onnx_equals_torch(region, scans):
    from detectors import yolo_detect as yd

    s = scans[region].scan
    a = yd.detect_landmarks_scan(s, region, net=runtime.shipped_onnx(f"yolo_{region}"))
    b = yd.detect_landmarks_scan(s, region, net=yd.shipped_model(region))
    for k in a:
        if b[k]["z_mm"] is None:
            assert a[k]["z_mm"] is None
            continue
        assert a[k]["z_mm"] == pytest.approx(b[k]["z_mm"], abs=0.5), k  # pixels are 1-2 mm
        assert a[k]["confidence"] == pytest.approx(b[k]["confidence"], abs=0.02), k
    for m in yd.ARTIFACT_MODELS:  # each member of the artifact ensemble, and the ensemble as assess runs it
        a = yd.detect_artifacts(s.hu, s.spacing[2], net=runtime.shipped_onnx(f"yolo_{m}"))
        b = yd.detect_artifacts(s.hu, s.spacing[2], net=yd.shipped_model(m))
        for k in a:
            assert a[k]["score"] == pytest.approx(b[k]["score"], abs=0.02), (m, k)
    a = yd.detect_artifacts(s.hu, s.spacing[2])
    b = yd.detect_artifacts(s.hu, s.spacing[2], net=[yd.shipped_model(m) for m in yd.ARTIFACT_MODELS])
    for k in a:
        assert a[k]["score"] == pytest.approx(b[k]["score"], abs=0.02), k


# ------------------------------------------------------------------ qc assess defaults
def test_assess_runs_the_networks_without_torch_and_names_them(tmp_path):
    from phantoms import simulate, write_phantom

    path = write_phantom(simulate("chest", seed=32, matrix=128, slice_mm=2.5), tmp_path)["scan"]
    code = f"""
import json, sys
from qc.pipeline import assess
a = assess({str(path)!r})
print(json.dumps({{"torch": "torch" in sys.modules, "ultralytics": "ultralytics" in sys.modules,
                   "monai": "monai" in sys.modules, "versions": a.versions,
                   "iqms": {{k: v.value for k, v in a.iqms.items()}}}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert not r["torch"] and not r["ultralytics"] and not r["monai"]
    v = r["versions"]
    assert v["segmenter"].startswith("monai seg_chest-") and "(onnx sha256:" in v["segmenter"]
    for name in ("chest_iqa", "tfkt", "noise2quality", "yolo_chest", "yolo_artifacts"):
        assert "(onnx sha256:" in v[name], (name, v.get(name))
    for iqm in ("chest_iqa_dose_prob_low", "tfkt_quality_score", "n2q_mean_ssim", "yolo_lung_apex_margin_mm",
                "yolo_costophrenic_margin_mm", "yolo_metal_streak_score", "yolo_motion_score", "yolo_ring_score"):
        assert r["iqms"][iqm] is not None, iqm


@pytest.mark.parametrize("region", ["head", "chest"])
def test_landmark_margin_iqms_match_the_phantom(region):
    from detectors import yolo_detect as yd
    from qc.pipeline import LANDMARK_MARGINS, assess

    for i in range(2):
        ph, _kw = yd.simulate_landmark_case(region, yd.TEST_SEED0[region] + 20 + i, heldout=True, matrix=128)
        a = assess(ph.scan, region=region)
        truth_z = yd.landmark_truth_z(ph.truth, region)
        top, bottom = ph.truth["scan_top_mm"], ph.truth["scan_bottom_mm"]
        for iqm, (landmark, edge) in LANDMARK_MARGINS[region].items():
            want = top - truth_z[landmark] if edge == "top" else truth_z[landmark] - bottom
            got = a.iqms[iqm].value
            assert got is not None, iqm
            assert abs(got - want) <= MARGIN_MM, (iqm, got, want)


def test_assess_with_every_network_needs_no_network_access(monkeypatch):
    """Every socket connection and DNS lookup fails: the default assessment (all networks) still completes."""
    from phantoms import simulate
    from qc.pipeline import assess
    from tests.offline import refuse_network

    calls: list = []
    refuse_network(monkeypatch, calls)
    a = assess(simulate("head", seed=33, matrix=128, slice_mm=2.5).scan)
    assert not calls
    assert a.versions["segmenter"].startswith("monai seg_head-")
    for iqm in ("tfkt_quality_score", "n2q_mean_ssim", "yolo_vertex_margin_mm", "yolo_ring_score"):
        assert a.iqms[iqm].value is not None, iqm
