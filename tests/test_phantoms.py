"""Phantom simulator: determinism, noise physics, image vs projection mode, truth consistency, artifacts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from metrics.noise import nps_mean_frequency
from phantoms import simulate
from phantoms.anatomy import GAS_LUNG_GAP_MM
from phantoms.simulate import ARTIFACT_BITS
from phantoms.tissues import NAME_TO_LABEL
from tests.conftest import shared_path

# thin slabs keep the projection mode fast (about 1 s per 256^2 slice)
HEAD_SLAB = dict(z_start=10.0, z_end=12.5)
CHEST_SLAB = dict(z_start=-90.0, z_end=-85.0)


def test_same_seed_identical_different_seed_different():
    a = simulate("head", seed=1, matrix=128)
    b = simulate("head", seed=1, matrix=128)
    c = simulate("head", seed=2, matrix=128)
    assert np.array_equal(a.scan.hu, b.scan.hu) and np.array_equal(a.labels, b.labels) and a.truth == b.truth
    assert a.truth["head_scale"] != c.truth["head_scale"]
    assert not np.array_equal(a.labels, c.labels[: a.labels.shape[0]]) or a.labels.shape != c.labels.shape


def test_projection_noise_scales_as_inverse_sqrt_mas():
    sd = {m: simulate("head", seed=4, mode="projection", mas=m, **HEAD_SLAB).truth["noise_sd_hu"] for m in (25, 100)}
    assert sd[25] / sd[100] == pytest.approx(2.0, rel=0.05)


def test_sharp_kernel_has_higher_nps_frequency_and_noise():
    out = {}
    for kernel in ("smooth", "sharp"):
        ph = simulate("head", seed=4, mode="projection", kernel=kernel, **HEAD_SLAB)
        out[kernel] = (ph.truth["noise_sd_hu"], nps_mean_frequency(ph.scan.hu - ph.noise_free, ph.truth["pixel_mm"]))
    assert out["sharp"][0] > 1.5 * out["smooth"][0]
    assert out["sharp"][1] > 1.3 * out["smooth"][1]


def test_noise_grows_with_patient_size():
    small = simulate("chest", seed=3, mode="projection", **CHEST_SLAB).truth  # seeds picked for their sizes
    large = simulate("chest", seed=10, mode="projection", **CHEST_SLAB).truth
    assert large["wed_mm"] > small["wed_mm"] + 40
    assert large["noise_sd_hu"] > 1.3 * small["noise_sd_hu"]


@pytest.mark.parametrize("region, kernel, slab", [("head", "smooth", HEAD_SLAB), ("chest", "sharp", CHEST_SLAB)])
def test_image_mode_matches_projection_mode_statistically(region, kernel, slab):
    """The fast image mode is calibrated on the projection mode: SD within 5 %, NPS mean frequency within 10 %."""
    res = {}
    for mode in ("image", "projection"):
        ph = simulate(region, seed=6, mode=mode, kernel=kernel, **slab)
        res[mode] = (ph.truth["noise_sd_hu"], nps_mean_frequency(ph.scan.hu - ph.noise_free, ph.truth["pixel_mm"]))
    assert res["image"][0] == pytest.approx(res["projection"][0], rel=0.05)
    assert res["image"][1] == pytest.approx(res["projection"][1], rel=0.10)


def test_truth_fields_present_and_consistent_with_labels():
    lens = NAME_TO_LABEL["lens"]
    full = simulate("head", seed=2, matrix=128)
    t = full.truth
    for key in ("vertex_z_mm", "skull_base_z_mm", "lens_z_mm", "eam_z_mm", "noise_sd_hu", "noise_sd_by_tissue_hu",
                "cnr_gm_wm", "wed_mm", "centering_offset_lateral_mm", "centering_offset_vertical_mm", "mas",
                "dose_fraction", "kernel", "artifacts", "artifact_present", "lens_in_scan", "vertex_in_scan",
                "skull_base_in_scan", "yaw_deg", "pitch_deg", "roll_deg"):
        assert key in t, key
    assert t["lens_in_scan"] and (full.labels == lens).any()
    above = simulate("head", seed=2, matrix=128, z_start=max(t["lens_z_mm"]) + 15.0)
    assert above.truth["lens_in_scan"] is False and not (above.labels == lens).any()
    cut = simulate("head", seed=2, matrix=128, z_end=t["vertex_z_mm"] - 20.0)
    assert cut.truth["vertex_in_scan"] is False and cut.truth["vertex_margin_mm"] < 0
    assert 120 <= t["wed_mm"] <= 210
    assert t["cnr_gm_wm"] > 0
    chest = simulate("chest", seed=2, matrix=128).truth
    assert 200 <= chest["wed_mm"] <= 400 and chest["apex_in_scan"] and chest["base_in_scan"]
    assert simulate("chest", seed=2, matrix=128, z_end=chest["lung_apex_z_mm"] - 10).truth["apex_in_scan"] is False


def test_dose_fraction_scales_mas_and_noise():
    full = simulate("chest", seed=3, matrix=128, **CHEST_SLAB).truth
    low = simulate("chest", seed=3, matrix=128, dose_fraction=0.25, **CHEST_SLAB).truth
    assert low["mas"] == pytest.approx(0.25 * full["mas"])
    assert low["noise_sd_hu"] / full["noise_sd_hu"] == pytest.approx(2.0, rel=0.05)


def _artifact_case(name: str, mode: str):
    slab = {"metal": dict(z_start=-50.0, z_end=-35.0), "beam_hardening": dict(z_start=-40.0, z_end=-30.0)}.get(
        name, dict(z_start=10.0, z_end=15.0))
    region = "chest" if name == "truncation" else "head"
    if region == "chest":
        slab = CHEST_SLAB
    kw = dict(seed=8, mode=mode, matrix=128 if mode == "image" else 256, **slab)
    return simulate(region, artifacts={name: 1.0}, **kw), simulate(region, **kw)


@pytest.mark.parametrize("name", list(ARTIFACT_BITS))
def test_artifact_visible_only_inside_its_truth_mask(name):
    art, clean = _artifact_case(name, "image")
    mask = (art.artifact_mask & ARTIFACT_BITS[name]) > 0
    assert mask.any() and art.truth["artifact_present"][name] and not clean.truth["artifact_present"][name]
    # the mask is defined on the noise-free twin (smoothed |difference| > 5 HU); check it on the noisy scans
    diff = ndi.gaussian_filter(np.abs(art.scan.hu - clean.scan.hu), sigma=(0, 1, 1))
    outside = ~ndi.binary_dilation(mask, structure=np.ones((1, 3, 3), bool))
    assert np.median(diff[mask]) > 5.0
    assert diff[outside].max() < 5.0 + 1.0  # + rounding to integer HU


@pytest.mark.parametrize("name", ["ring", "metal"])
def test_artifact_mask_in_projection_mode(name):
    art, clean = _artifact_case(name, "projection")
    mask = art.artifact_mask > 0
    diff = ndi.gaussian_filter(np.abs(art.scan.hu - clean.scan.hu), sigma=(0, 1, 1))
    outside = ~ndi.binary_dilation(mask, structure=np.ones((1, 3, 3), bool))
    assert np.median(diff[mask]) > 5.0
    assert diff[outside].max() < 5.0 + 1.0  # + rounding to integer HU


def test_noise_insertion_into_real_head_ct():
    from phantoms.insert import insert_noise
    from qc.io import load_scan

    scan = load_scan(shared_path("head_ct_ge_tilted"))
    brain = (scan.hu[30] > 15) & (scan.hu[30] < 45)
    sds = {}
    for f in (0.5, 0.25):
        out, added, truth = insert_noise(scan, f, seed=1, slices=[30])
        assert np.allclose(out.hu - scan.hu, added, atol=1e-3)
        assert truth["simulated_mas"] == pytest.approx(f * 360.0)
        assert not added[29].any()  # untouched slices stay untouched
        sds[f] = added[30][brain].std()
    # added variance ~ (1/f - 1): SD ratio sqrt(3) between f = 0.25 and f = 0.5
    assert sds[0.25] / sds[0.5] == pytest.approx(np.sqrt(3.0), rel=0.05)


def test_simulate_dataset_cli(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from qc.cli import app

    r = CliRunner().invoke(app, ["simulate", "dataset", "--n", "4", "--out", str(tmp_path), "--matrix", "128",
                                 "--artifact-prob", "0"])
    assert r.exit_code == 0, r.output
    m = pd.read_csv(tmp_path / "manifest.csv")
    assert len(m) == 4 and set(m["region"]) == {"head", "chest"} and set(m["kernel"]) == {"smooth", "sharp"}
    assert {"noise_sd_hu", "wed_mm", "centering_offset_vertical_mm", "artifact_present.metal"} <= set(m.columns)
    assert all((tmp_path / p).exists() for p in m["path"])


def test_abdominal_gas_lies_below_the_diaphragm_and_apart_from_the_lungs():
    """Bowel/stomach gas (label bowel_gas, -1000 HU) is drawn in most chest phantoms, inside the body, at the lung
    bases' level or below, and never touches the lungs (>= GAS_LUNG_GAP_MM of diaphragm/soft tissue in 3-D; at
    128 matrix that is more than one voxel, so no connected-component step can join gas and lung)."""
    gas_l, lung_l = NAME_TO_LABEL["bowel_gas"], NAME_TO_LABEL["lung"]
    n_with = 0
    for seed in range(6):
        ph = simulate("chest", seed=seed, matrix=128, slice_mm=2.5, noise=False)
        gas = ph.labels == gas_l
        if not gas.any():
            continue
        n_with += 1
        z = ph.scan.z_positions_mm()
        zg = z[np.nonzero(gas.any(axis=(1, 2)))[0]]
        lung_z = z[np.nonzero((ph.labels == lung_l).any(axis=(1, 2)))[0]]
        assert zg.max() < lung_z.max() - 100, seed          # well below the apices
        assert zg.max() <= ph.truth["lung_base_z_mm"] + 90, seed   # under the domes (<= 90 mm above the bases)
        gap = ndi.distance_transform_edt(ph.labels != lung_l, sampling=ph.scan.spacing)[gas].min()
        assert gap >= GAS_LUNG_GAP_MM, (seed, gap)
        assert np.median(ph.noise_free[gas]) < -950, seed
    assert n_with >= 4


def test_patient_table_lies_under_the_patient_outside_the_body():
    """The table (phantoms.anatomy.patient_table) is only in the image: labels are unchanged (label 0 = outside the
    patient), the body's pixels keep their HU, and the table's pixels lie under (posterior to) the body, with the
    mattress (-900..-600 HU) touching the back and the carbon-fibre shells (100..400 HU) further down. Its own random
    stream leaves the rest of the seed as it was."""
    from phantoms.simulate import _body_from_labels

    for seed in (2, 3):
        plain = simulate("chest", seed=seed, matrix=128, slice_mm=5.0, noise=False)
        tab = simulate("chest", seed=seed, matrix=128, slice_mm=5.0, noise=False, table=True)
        assert np.array_equal(plain.labels, tab.labels)
        assert tab.truth["table"] is True and "table" not in plain.truth
        body = _body_from_labels(tab.labels)
        changed = np.abs(tab.noise_free - plain.noise_free) > 50  # the table, blurred by the kernel's PSF
        assert changed.any()
        assert not (changed & ndi.binary_erosion(body, iterations=2)).any(), seed
        k = tab.labels.shape[0] // 2
        rows_body = np.nonzero(body[k].any(axis=1))[0]
        rows_tab = np.nonzero(changed[k].any(axis=1))[0]
        assert rows_tab.max() > rows_body.max() + 5, seed      # extends well below the back (y posterior = rows down)
        col = tab.labels.shape[2] // 2
        below = tab.noise_free[k, rows_body.max() + 2 :, col]
        assert (below > 50).any(), seed                        # a carbon-fibre shell under the patient
        assert ((below > -900) & (below < -500)).sum() >= 2, seed  # mattress foam between back and shell
