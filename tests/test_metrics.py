"""IQMs against ground truth: simulator truth, and real scans with known inserted perturbations."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.registry import get_registry
from phantoms import simulate
from qc.io import Scan
from qc.pipeline import assess, compute_masks, isocenter_index
from tests.conftest import shared_path


def test_every_registered_iqm_is_documented():
    reg = get_registry()
    assert len(reg) >= 10
    for name, spec in reg.items():
        assert spec.unit, name
        assert spec.direction in ("higher_is_better", "lower_is_better", "closer_to_target"), name
        assert len(spec.formula) > 10, name
        assert len(spec.reference) > 10, name
        assert len(spec.description) > 20, name
        assert set(spec.regions) <= {"head", "chest"} and spec.regions, name


def _iqm(scan, region=None):
    return {n: i.value for n, i in assess(scan, region=region or "auto").iqms.items()}


# ------------------------------------------------------------------ noise
@pytest.mark.parametrize("region, kernel, mas", [("head", "smooth", 25), ("head", "smooth", 400), ("head", "sharp", 100),
                                                  ("chest", "smooth", 10), ("chest", "smooth", 100), ("chest", "sharp", 30)])
def test_global_noise_index_matches_simulated_noise_sd(region, kernel, mas):
    ph = simulate(region, seed=11, mas=mas, kernel=kernel)
    got = _iqm(ph.scan)["global_noise_index_hu"]
    assert got == pytest.approx(ph.truth["noise_sd_hu"], rel=0.05)


def test_noise_on_real_head_ct_adds_in_quadrature():
    """Known Gaussian noise added to the real GE head CT: GNI follows sqrt(s0^2 + s_add^2) within 5 %."""
    from metrics.noise import global_noise_index_hu
    from qc.io import load_scan

    scan = load_scan(shared_path("head_ct_ge_tilted"))
    base = global_noise_index_hu(scan.hu, scan.spacing, compute_masks(scan)["body_mask"])
    assert 1.5 < base < 8.0
    rng = np.random.default_rng(0)
    for s_add in (5.0, 15.0):
        hu = scan.hu + rng.normal(0, s_add, scan.hu.shape).astype(np.float32)
        noisy = Scan(hu=hu, spacing=scan.spacing, origin=scan.origin, fov=scan.fov, metadata=scan.metadata)
        got = global_noise_index_hu(noisy.hu, noisy.spacing, compute_masks(noisy)["body_mask"])
        assert got == pytest.approx(np.hypot(base, s_add), rel=0.05)


# ------------------------------------------------------------------ positioning
@pytest.mark.parametrize("region, sx, sy", [("head", 0, 0), ("head", -15, 30), ("chest", 20, -25), ("chest", 0, 40)])
def test_centering_offsets_match_truth(region, sx, sy):
    ph = simulate(region, seed=4, shift_x=sx, shift_y=sy)
    got = _iqm(ph.scan)
    assert got["centering_offset_lateral_mm"] == pytest.approx(ph.truth["centering_offset_lateral_mm"], abs=2.0)
    assert got["centering_offset_vertical_mm"] == pytest.approx(ph.truth["centering_offset_vertical_mm"], abs=2.0)


def test_centering_follows_a_known_shift_of_the_real_head():
    from qc.io import load_scan

    scan = load_scan(shared_path("head_ct_ge_tilted"))
    masks = compute_masks(scan)
    from metrics.positioning import body_centroid_offset_mm

    x0, y0 = body_centroid_offset_mm(masks["body_mask"], scan.spacing, isocenter_index(scan))
    shift_px = 41  # 20.0 mm at 0.488 mm pixels
    hu = np.full_like(scan.hu, -1024.0)
    hu[:, :, shift_px:] = scan.hu[:, :, :-shift_px]
    moved = Scan(hu=hu, spacing=scan.spacing, origin=scan.origin, metadata=scan.metadata)
    x1, y1 = body_centroid_offset_mm(compute_masks(moved)["body_mask"], moved.spacing, isocenter_index(moved))
    assert x1 - x0 == pytest.approx(shift_px * scan.spacing[2], abs=2.0)
    assert y1 - y0 == pytest.approx(0.0, abs=2.0)


# ------------------------------------------------------------------ coverage
@pytest.mark.parametrize("kw", [{}, {"z_end": 60.0}, {"z_end": 75.0}, {"pitch": 8.0, "z_end": 80.0}, {"z_start": -45.0},
                                {"yaw": 10.0, "roll": 5.0}])
def test_head_coverage_margins_match_truth(kw):
    ph = simulate("head", seed=6, **kw)
    got = _iqm(ph.scan)
    t = ph.truth
    assert got["vertex_margin_mm"] == pytest.approx(t["vertex_margin_mm"], abs=3.0)
    assert (got["vertex_margin_mm"] > 0) == t["vertex_in_scan"]
    if not (kw.get("pitch") or kw.get("roll")):
        # the classical skull-base level is a cavity-area threshold: with head pitch/roll the oblique skull
        # base makes it read lower than the foramen magnum (pitch 8 deg: 9 mm, roll 5 deg: 4 mm); landmark
        # detection (detectors issue) replaces it
        assert got["skull_base_margin_mm"] == pytest.approx(t["skull_base_margin_mm"], abs=3.0)


def test_head_skull_base_cut_reads_zero():
    ph = simulate("head", seed=6, z_start=-20.0)
    assert ph.truth["skull_base_in_scan"] is False
    assert _iqm(ph.scan)["skull_base_margin_mm"] == 0.0


@pytest.mark.parametrize("kw, cut", [({}, None), ({"z_end": 60.0}, "apex"), ({"z_start": -180.0}, "base")])
def test_chest_coverage_margins_match_truth(kw, cut):
    ph = simulate("chest", seed=8, **kw)
    got = _iqm(ph.scan)
    t = ph.truth
    slice_mm = t["slice_mm"]
    if cut == "apex":
        assert not t["apex_in_scan"] and got["lung_apex_margin_mm"] == 0.0
    else:
        assert got["lung_apex_margin_mm"] == pytest.approx(t["lung_apex_margin_mm"], abs=slice_mm)
    if cut == "base":
        assert not t["base_in_scan"] and got["lung_base_margin_mm"] == 0.0
    else:
        assert got["lung_base_margin_mm"] == pytest.approx(t["lung_base_margin_mm"], abs=slice_mm)


def test_dropping_top_slices_of_real_head_flags_the_vertex_cut():
    from qc.io import load_scan

    scan = load_scan(shared_path("head_ct_ge_tilted"))
    full = _iqm(scan, "head")["vertex_margin_mm"]
    assert full > 0
    keep = scan.shape[0] - int(np.ceil((full + 20.0) / scan.spacing[0]))  # cut ~20 mm into the skull
    cut = Scan(hu=scan.hu[:keep], spacing=scan.spacing, origin=scan.origin, fov=scan.fov[:keep], metadata=scan.metadata)
    assert _iqm(cut, "head")["vertex_margin_mm"] < 0


# ------------------------------------------------------------------ window, clipping, dose
def test_window_errors_from_tags():
    from metrics.protocol import window_center_error_hu, window_width_error_pct

    assert window_center_error_hu({"WindowCenter": 35, "WindowWidth": 100}, "head") == -5.0
    assert window_width_error_pct({"WindowCenter": 35, "WindowWidth": 100}, "head") == pytest.approx(25.0)
    # nearest preset: a W400/L40 chest window is the mediastinal one, not lung
    assert window_width_error_pct({"WindowCenter": 40, "WindowWidth": 400}, "chest") == pytest.approx(100 * 50 / 350)
    assert window_center_error_hu({"WindowCenter": -500, "WindowWidth": 1500}, "chest") == 100.0
    assert window_center_error_hu({}, "head") is None


def test_clipping_detects_prewindowed_storage(head_phantom):
    from metrics.protocol import clipped_voxel_fraction_pct

    masks = compute_masks(head_phantom.scan)
    normal = clipped_voxel_fraction_pct(head_phantom.scan.hu, masks["body_mask"])
    clipped = clipped_voxel_fraction_pct(np.clip(head_phantom.scan.hu, 0, 80), masks["body_mask"])
    assert normal < 0.1
    assert clipped > 5.0


def test_dose_iqms_from_header(head_phantom):
    got = _iqm(head_phantom.scan)
    assert got["ctdivol_mgy"] == pytest.approx(head_phantom.truth["ctdivol_mgy"])
    assert got["tube_current_time_product_mas"] == pytest.approx(head_phantom.truth["mas"])


# ------------------------------------------------------------------ size and dose
@pytest.mark.parametrize("region, seed", [("head", 2), ("head", 7), ("chest", 3), ("chest", 10)])
def test_water_equivalent_diameter_matches_truth(region, seed):
    ph = simulate(region, seed=seed)
    assert _iqm(ph.scan)["water_equivalent_diameter_mm"] == pytest.approx(ph.truth["wed_mm"], rel=0.03)


def test_ssde_and_dlp_follow_their_definitions(chest_phantom):
    from metrics.dose import ssde_factor

    got = _iqm(chest_phantom.scan)
    ctdi = chest_phantom.truth["ctdivol_mgy"]
    assert got["ssde_mgy"] == pytest.approx(ctdi * ssde_factor(got["water_equivalent_diameter_mm"], "chest"))
    # TG-204 Table 1B (32 cm phantom): a 30 cm effective diameter has f = 1.23
    assert ssde_factor(300.0, "chest") == pytest.approx(1.23, abs=0.01)
    length = chest_phantom.truth["scan_top_mm"] - chest_phantom.truth["scan_bottom_mm"]
    assert got["scan_length_mm"] == pytest.approx(length, abs=1e-6)
    assert got["dlp_mgy_cm"] == pytest.approx(ctdi * length / 10.0)


# ------------------------------------------------------------------ noise texture, CNR, air
@pytest.mark.parametrize("region, kernel, mode", [("head", "smooth", "image"), ("head", "sharp", "image"),
                                                   ("chest", "smooth", "image"), ("chest", "sharp", "image"),
                                                   ("head", "smooth", "projection")])
def test_nps_mean_frequency_matches_true_noise(region, kernel, mode):
    from metrics.noise import nps_mean_frequency

    slab = {} if mode == "image" else dict(z_start=0.0, z_end=20.0)
    ph = simulate(region, seed=5, kernel=kernel, mode=mode, **slab)
    truth = nps_mean_frequency(ph.scan.hu - ph.noise_free, ph.truth["pixel_mm"])
    assert _iqm(ph.scan)["nps_mean_frequency_per_mm"] == pytest.approx(truth, rel=0.10)


@pytest.mark.parametrize("kw", [dict(seed=4), dict(seed=5, kernel="sharp", mas=200),
                                dict(seed=6, mode="projection", z_start=0.0, z_end=20.0)])
def test_cnr_gm_wm_matches_truth(kw):
    ph = simulate("head", **kw)
    assert _iqm(ph.scan)["cnr_gm_wm"] == pytest.approx(ph.truth["cnr_gm_wm"], rel=0.10)


def test_air_noise_at_moderate_noise():
    ph = simulate("chest", seed=3)  # ~5 HU: far from the -1024 HU clamp
    assert _iqm(ph.scan)["air_noise_sd_hu"] == pytest.approx(ph.truth["noise_sd_hu"], rel=0.05)


# ------------------------------------------------------------------ head angles
@pytest.mark.parametrize("yaw, roll, pitch", [(8, -5, 6), (-4, 3, 0), (0, 0, -10), (12, 0, 0)])
def test_head_angles_match_truth(yaw, roll, pitch):
    got = _iqm(simulate("head", seed=2, yaw=yaw, roll=roll, pitch=pitch).scan)
    assert got["head_yaw_deg"] == pytest.approx(yaw, abs=2.0)
    assert got["head_roll_deg"] == pytest.approx(roll, abs=2.0)
    assert got["head_pitch_deg"] == pytest.approx(pitch, abs=2.0)


# ------------------------------------------------------------------ artifacts
def test_truncation_detected_when_body_leaves_the_field():
    assert _iqm(simulate("chest", seed=3, matrix=128).scan)["truncation_pct"] == 0.0
    assert _iqm(simulate("chest", seed=3, matrix=128, shift_x=120).scan)["truncation_pct"] > 90.0


def test_metal_artifact_index_separates_metal():
    kw = dict(seed=3, z_start=-45.0, z_end=-20.0)
    clean = _iqm(simulate("head", **kw).scan, "head")["metal_artifact_index_hu"]
    metal = _iqm(simulate("head", artifacts={"metal": 0.5}, **kw).scan, "head")["metal_artifact_index_hu"]
    assert clean == 0.0 and metal > 10.0


def test_ring_index_separates_strong_rings():
    from sklearn.metrics import roc_auc_score

    from metrics.artifacts import ring_index_hu

    scores, labels = [], []
    for seed in (1, 2, 3):
        for sev in (0.0, 1.0):
            for region, zr in (("head", (0.0, 10.0)), ("chest", (-60.0, -40.0))):
                ph = simulate(region, seed=seed, matrix=128, z_start=zr[0], z_end=zr[1],
                              artifacts={"ring": sev} if sev else None)
                scores.append(ring_index_hu(ph.scan.hu, compute_masks(ph.scan)["body_mask"]) / (1 + ph.truth["noise_sd_hu"]))
                labels.append(sev > 0)
    assert roc_auc_score(labels, scores) >= 0.95


# ------------------------------------------------------------------ noise in anatomical ROIs
@pytest.mark.parametrize("region, kw", [("head", dict(seed=4)), ("head", dict(seed=5, kernel="sharp", mas=100)),
                                        ("head", dict(seed=6, mode="projection", z_start=-35.0, z_end=40.0)),
                                        ("chest", dict(seed=3)), ("chest", dict(seed=2, kernel="sharp"))])
# Not in the list: the chest in projection mode, where the paraspinal ROI also picks up the FBP streak texture
# around the vertebra that the noise-free twin contains (measured 7.05 vs 5.91 HU noise-only, seed 6); that
# texture is real image degradation, but not "noise" by the twin's definition.
def test_roi_noise_matches_noise_in_the_same_roi(region, kw):
    """Truth: SD of (noisy - noise-free twin) over the ROI the metric placed (noise is not stationary in the
    projection mode, so tissue-wide truth would not do)."""
    from metrics import noise as N

    ph = simulate(region, **kw)
    s, masks = ph.scan, compute_masks(ph.scan)
    got = _iqm(s)
    field = s.hu - ph.noise_free
    if region == "head":
        rois = {"noise_sd_white_matter_hu": N.white_matter_roi(s.hu, s.spacing, masks["intracranial_mask"]),
                "noise_sd_posterior_fossa_hu": N.posterior_fossa_roi(s.hu, s.spacing, masks["intracranial_mask"])}
    else:
        rois = {"noise_sd_subcutaneous_fat_hu": N.subcutaneous_fat_roi(s.hu, s.spacing, masks["body_mask"]),
                "noise_sd_paraspinal_muscle_hu": N.paraspinal_muscle_roi(s.hu, s.spacing, masks["body_mask"])}
    measured = 0
    for name, roi in rois.items():
        if got[name] is None:
            continue
        measured += 1
        assert got[name] == pytest.approx(float(field[roi].std()), rel=0.05), name
    assert measured >= 1
