"""Segmentation backends: nnU-Net v2 export + inference (detectors/nnunet_backend.py) and TotalSegmentator
(detectors/totalseg_backend.py).

The end-to-end test trains nothing (nnU-Net on CPU is ~5 s per iteration): it exports a tiny dataset, checks it
with nnU-Net's own ``verify_dataset_integrity``, plans it with nnU-Net's fingerprint extractor and planner, saves
the planned network's *untrained* weights as ``fold_0/checkpoint_final.pth`` in nnU-Net's checkpoint format and
runs ``qc assess --segmenter nnunet:<folder>`` on a tiny simulated scan.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from detectors import nnunet_backend as nb
from detectors import segmentation as seg
from detectors import totalseg_backend as ts
from qc.cli import app
from qc.errors import QCInputError
from qc.io import Scan

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_head(tmp_path_factory):
    """A small simulated head (64 x 64 matrix, seed 5: not one of the exported cases) and its NIfTI file."""
    from phantoms import write_phantom

    ph, _kw = seg.make_case("head", 5, 64)
    out = tmp_path_factory.mktemp("tiny_head")
    return ph, write_phantom(ph, out)["scan"]


def _no_traceback(r):
    assert "Traceback" not in r.output, r.output


# ------------------------------------------------------------------------------------------------
# label names -> masks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["head", "chest"])
def test_our_label_set_maps_like_the_monai_segmenter(region):
    """For the exported label set, the name mapping gives the class unions of segmentation.OUTPUT_MASKS (metal:
    the network's metal label itself, not the MONAI path's HU > 2000 rule)."""
    names = seg.REGION_CLASSES[region]
    groups = nb.label_groups({n: i for i, n in enumerate(names)})
    assert set(groups) == set(seg.OUTPUT_MASKS[region])
    for mask, classes in seg.OUTPUT_MASKS[region].items():
        got = {names[i] for i in groups[mask]}
        assert got == ({"metal"} if mask == "metal_mask" else set(classes)), mask


def test_totalsegmentator_names_map_to_our_masks():
    total = {i + 1: n for i, n in enumerate(
        ["spleen", "liver", "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
         "lung_middle_lobe_right", "lung_lower_lobe_right", "trachea", "heart", "aorta", "vertebrae_T4", "spinal_cord",
         "brain", "skull", "humerus_left"])}
    g = nb.label_groups({"background": 0, **{n: i for i, n in total.items()}})
    assert [total[i] for i in g["lung_mask"]] == ["lung_upper_lobe_left", "lung_lower_lobe_left",
                                                  "lung_upper_lobe_right", "lung_middle_lobe_right",
                                                  "lung_lower_lobe_right"]
    assert [total[i] for i in g["intracranial_mask"]] == ["brain"] and [total[i] for i in g["skull_mask"]] == ["skull"]
    assert {total[i] for i in g["spine_mask"]} == {"vertebrae_T4", "spinal_cord"}
    assert "body_mask" not in g  # no body label: body comes from the classical segmenter
    body = nb.label_groups({"background": 0, "body_trunc": 1, "body_extremities": 2})
    assert body["body_mask"] == [1, 2] and body["arms_mask"] == [2]


def test_masks_from_labelmap():
    lab = np.zeros((2, 4, 4), np.uint8)
    lab[0, 1:3, 1:3] = 2
    lab[1, 0, 0] = 3
    m = nb.masks_from_labelmap(lab, {"body_mask": [1, 2, 3], "lens_mask": [3], "skull_mask": [1]})
    assert m["body_mask"].sum() == 5 and m["lens_mask"].sum() == 1 and m["body_mask"].dtype == bool
    assert m["skull_mask"].shape == lab.shape and not m["skull_mask"].any()


# ------------------------------------------------------------------------------------------------
# bad input: clear errors, no traceback
# ------------------------------------------------------------------------------------------------


def test_segmenter_names_are_checked():
    from qc.pipeline import compute_masks

    scan = Scan(hu=np.zeros((4, 8, 8)), spacing=(1, 1, 1))
    for bad in ("nnunet", "nnunet:", "nnunet:  "):
        with pytest.raises(QCInputError, match="nnunet:MODEL_DIR"):
            compute_masks(scan, bad)
    with pytest.raises(QCInputError, match="segmenter must be one of"):
        compute_masks(scan, "deepmedic")


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def test_nnunet_model_folder_errors_name_what_is_missing(tmp_path):
    d = tmp_path / "model"
    with pytest.raises(QCInputError, match="model folder not found"):
        nb.inspect_model_folder(d)
    d.mkdir()
    with pytest.raises(QCInputError, match="no dataset.json"):
        nb.inspect_model_folder(d)
    _write_json(d / "dataset.json", {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lungs": 1},
                                     "numTraining": 1, "file_ending": ".nii.gz"})
    with pytest.raises(QCInputError, match="no plans.json"):
        nb.inspect_model_folder(d)
    _write_json(d / "plans.json", {"dataset_name": "Dataset001_X", "configurations": {}})
    (d / "fold_0").mkdir()
    (d / "fold_0" / "checkpoint_best.pth").write_bytes(b"")
    with pytest.raises(QCInputError, match=r"no fold_X/checkpoint_final.pth \(found fold_0/checkpoint_best.pth"):
        nb.inspect_model_folder(d)
    (d / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    assert nb.inspect_model_folder(d).groups == {"lung_mask": [1]}
    _write_json(d / "dataset.json", {"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumour": 1, "liver": 2},
                                     "numTraining": 1, "file_ending": ".nii.gz"})
    with pytest.raises(QCInputError, match=r"none of the model's labels \(tumour, liver\)"):
        nb.inspect_model_folder(d)
    _write_json(d / "dataset.json", {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lungs": 1},
                                     "numTraining": 1, "file_ending": ".nii.gz"})
    with pytest.raises(QCInputError, match="expects 2 input channels"):
        nb.inspect_model_folder(d)
    (d / "dataset.json").write_text("{broken")
    with pytest.raises(QCInputError, match="dataset.json is unreadable"):
        nb.inspect_model_folder(d)


class _Payload:  # a class a pickle would have to import: refused by the weights-only loader
    pass


def test_checkpoints_are_loaded_as_data(tmp_path):
    import torch

    ok = tmp_path / "ok.pth"
    torch.save({"network_weights": {"w": torch.zeros(2)}, "logging": {"mean_fg_dice": [np.float64(0.5)]},
                "_best_ema": np.float32(0.1), "init_args": {"device": torch.device("cpu")}}, ok)
    ck = nb.load_checkpoint(ok)
    assert float(ck["logging"]["mean_fg_dice"][0]) == 0.5
    bad = tmp_path / "bad.pth"
    torch.save({"network_weights": {"w": torch.zeros(2)}, "extra": _Payload()}, bad)
    with pytest.raises(QCInputError, match="beyond tensors and numbers"):
        nb.load_checkpoint(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(QCInputError, match="unreadable"):
        nb.load_checkpoint(junk)


def test_missing_model_dir_via_cli_is_exit_2(tiny_head, tmp_path):
    _ph, scan_path = tiny_head
    r = runner.invoke(app, ["assess", str(scan_path), "--segmenter", f"nnunet:{tmp_path / 'nope'}"])
    assert r.exit_code == 2 and "nnU-Net model folder not found" in r.output
    _no_traceback(r)


def test_totalsegmentator_not_installed_is_a_clear_error(tiny_head, tmp_path, monkeypatch):
    from qc.pipeline import compute_masks

    ph, scan_path = tiny_head
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts"))
    assert ts.weights_dir() == tmp_path / "ts" / "nnunet" / "results"
    with pytest.raises(QCInputError, match="we never download") as exc:
        compute_masks(ph.scan, "totalsegmentator")
    msg = str(exc.value)
    assert "package is not installed" in msg and f"TotalSegmentator weights not found at {tmp_path / 'ts'}" in msg
    assert "totalseg_download_weights -t total_fast" in msg
    r = runner.invoke(app, ["assess", str(scan_path), "--segmenter", "totalsegmentator"])
    assert r.exit_code == 2 and "TotalSegmentator weights not found" in r.output
    _no_traceback(r)
    # package present (pretended) but no weights: the missing model is named
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "totalsegmentator" else real(name, *a))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "w"))
    with pytest.raises(QCInputError, match=r"the total model is missing; TotalSegmentator weights not found at .*w"):
        ts.available_models()


def test_export_refuses_bad_options(tmp_path):
    with pytest.raises(QCInputError, match="head or chest"):
        nb.export_dataset(tmp_path, "abdomen", 1)
    (tmp_path / "Dataset901_Other").mkdir()
    with pytest.raises(QCInputError, match="already uses dataset ID 901"):
        nb.export_dataset(tmp_path, "head", 1, matrix=64)
    r = runner.invoke(app, ["export-nnunet", "--out", str(tmp_path), "--region", "head", "--n", "0"])
    assert r.exit_code == 2
    _no_traceback(r)


# ------------------------------------------------------------------------------------------------
# end to end: export -> nnU-Net checks and planning -> untrained checkpoint -> qc assess
# ------------------------------------------------------------------------------------------------


def _plan(dataset_id: int) -> None:
    """nnU-Net's fingerprint + default planner (one worker; 10^4 intensity samples instead of 10^8 to stay fast)."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments

    fpe = DatasetFingerprintExtractor(dataset_id, 1, verbose=False)
    fpe.num_foreground_voxels_for_intensitystats = 10_000
    fpe.run(overwrite_existing=True)
    plan_experiments([dataset_id])


def _untrained_model_folder(results: Path, preprocessed: Path) -> Path:
    """nnUNet_results/<dataset>/nnUNetTrainer__nnUNetPlans__3d_fullres with the planned network's initial weights
    saved the way nnUNetTrainer.save_checkpoint does (numpy scalars in the log, as after real training)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    md = results / preprocessed.name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (md / "fold_0").mkdir(parents=True)
    shutil.copy(preprocessed / "nnUNetPlans.json", md / "plans.json")
    shutil.copy(preprocessed / "dataset.json", md / "dataset.json")
    plans = json.loads((md / "plans.json").read_text())
    ds = json.loads((md / "dataset.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, pm.get_label_manager(ds).num_segmentation_heads,
                                                   enable_deep_supervision=True)
    torch.save({"network_weights": net.state_dict(), "optimizer_state": {}, "grad_scaler_state": None,
                "logging": {"mean_fg_dice": [np.float64(0.0)], "ema_fg_dice": [np.float64(0.0)],
                            "train_losses": [np.float64(1.0)]},
                "_best_ema": np.float64(0.0), "current_epoch": 0,
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": ds,
                              "device": torch.device("cpu")},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)},
               md / "fold_0" / "checkpoint_final.pth")
    return md


def test_nnunet_export_plan_and_assess_end_to_end(tiny_head, tmp_path, monkeypatch):
    import SimpleITK as sitk
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    from qc.pipeline import compute_masks

    t0 = time.perf_counter()
    raw, pre, res = (tmp_path / k for k in ("raw", "preprocessed", "results"))
    for d in (raw, pre, res):
        d.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(res))

    r = runner.invoke(app, ["export-nnunet", "--out", str(raw), "--region", "head", "--n", "2", "--matrix", "64"])
    assert r.exit_code == 0, r.output
    root = raw / "Dataset901_CTQCHead"
    ds = json.loads((root / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["numTraining"] == 2 and ds["file_ending"] == ".nii.gz"
    assert ds["labels"] == {n: i for i, n in enumerate(seg.REGION_CLASSES["head"])} and ds["labels"]["background"] == 0
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["case_0000_0000.nii.gz", "case_0001_0000.nii.gz"]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == ["case_0000.nii.gz", "case_0001.nii.gz"]
    # case 0 is make_case(seed 0): same geometry, rounded HU, class_map labels
    ph0, _kw = seg.make_case("head", 0, 64)
    img = sitk.ReadImage(str(root / "imagesTr" / "case_0000_0000.nii.gz"))
    lab = sitk.ReadImage(str(root / "labelsTr" / "case_0000.nii.gz"))
    for im in (img, lab):
        assert np.allclose(im.GetSpacing(), tuple(reversed(ph0.scan.spacing)))
        assert np.allclose(im.GetOrigin(), ph0.scan.origin, atol=1e-3)
        assert np.allclose(np.reshape(im.GetDirection(), (3, 3)), ph0.scan.direction)
    assert np.array_equal(sitk.GetArrayFromImage(img), np.rint(ph0.scan.hu).astype(np.int16))
    assert np.array_equal(sitk.GetArrayFromImage(lab), seg.class_map(ph0.labels, "head", ph0.truth.get("arms_up")))
    t_export = time.perf_counter() - t0

    verify_dataset_integrity(str(root), 1)  # raises on any problem
    _plan(901)
    md = _untrained_model_folder(res, pre / root.name)
    t_plan = time.perf_counter() - t0 - t_export

    ph, scan_path = tiny_head
    # masks through the Python API on a 12-slice slab (smaller than the network's patch: nnU-Net pads it)
    slab = Scan(hu=ph.scan.hu[10:22], spacing=ph.scan.spacing, origin=ph.scan.origin, direction=ph.scan.direction)
    masks = compute_masks(slab, f"nnunet:{md}", "head")
    assert set(seg.OUTPUT_MASKS["head"]) <= set(masks)
    for name, m in masks.items():
        assert m.shape == slab.shape and m.dtype == bool, name
    out = tmp_path / "r.json"
    r = runner.invoke(app, ["assess", str(scan_path), "--region", "head", "--segmenter", f"nnunet:{md}",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    versions = result["versions"]
    sha = hashlib.sha256((md / "fold_0" / "checkpoint_final.pth").read_bytes()).hexdigest()
    assert versions["segmenter"] == (f"nnunet Dataset901_CTQCHead/nnUNetTrainer__nnUNetPlans__3d_fullres "
                                     f"(nnUNetTrainer 3d_fullres, folds 0) sha256:{sha[:12]}; classical lung_mask")
    t_total = time.perf_counter() - t0
    print(f"\nnnU-Net end to end: export {t_export:.1f}s, verify+plan+checkpoint {t_plan:.1f}s, "
          f"qc assess segment {result['timings_s']['segment']:.1f}s, total {t_total:.1f}s")


def test_plans_may_not_import_other_code(tmp_path):
    from types import SimpleNamespace

    cm = SimpleNamespace(network_arch_class_name="os.system", network_arch_init_kwargs={},
                         network_arch_init_kwargs_req_import=())
    with pytest.raises(QCInputError, match="only classes from dynamic_network_architectures"):
        nb._check_plans_imports(cm, tmp_path / "plans.json")
    cm = SimpleNamespace(network_arch_class_name="dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         network_arch_init_kwargs={"conv_op": "subprocess.Popen"},
                         network_arch_init_kwargs_req_import=("conv_op",))
    with pytest.raises(QCInputError, match="imports 'subprocess.Popen'"):
        nb._check_plans_imports(cm, tmp_path / "plans.json")
