"""Coverage, radiation-protection and positioning IQMs against simulator ground truth.

Heads (matrix 128) with pitch/roll/yaw and scan ranges chosen around the landmarks (foramen magnum, eye
lenses, vertex), chests with arms up/down and cut/uncut lungs. Each case is simulated once (module-scoped
fixtures) and every IQM is checked on it. The statistics over hundreds of random cases (accuracy near the
decision boundaries) come from ``benchmarks/bench_coverage_positioning.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from metrics import coverage as C
from metrics import dose as D
from metrics import positioning as P
from metrics import radiation as R
from phantoms import anatomy, simulate
from qc.pipeline import compute_masks

LENS_SEMI_AXES = (4.5, 2.2, 4.5)  # phantoms.anatomy.head_labels: lens ellipsoid
GLOBE_OFFSET = np.array([0.0, 11.0, 0.0])  # head_labels: globe centre = lens centre + 11 mm posterior


def head_landmarks(seed: int, yaw: float, pitch: float, roll: float) -> dict:
    """Scanner-frame landmarks of the simulated head (same shape draw and formulas as phantoms.simulate /
    anatomy.head_labels; checked against the simulator's truth in the fixture)."""
    shape = anatomy.HeadShape.random(np.random.default_rng(seed))
    rot = anatomy.rotation_matrix(yaw, pitch, roll)
    outer = shape.skin_axes - 5.0
    eams = [rot @ np.array([sx * (outer[0] - 4.0), 0.05 * shape.skin_axes[1], shape.skull_base_z + 6.0]) for sx in (-1, 1)]
    globes = [rot @ (c + GLOBE_OFFSET) for c in shape.lens_centres]
    d = np.mean(globes, axis=0) - np.mean(eams, axis=0)
    return dict(
        vertex=anatomy.ellipsoid_z_extent(shape.skin_axes, rot),
        fm=float((rot @ np.array([0.0, 0.3 * shape.inner_axes[1], shape.skull_base_z]))[2]),
        lens=[float((rot @ c)[2]) for c in shape.lens_centres],
        lens_half=anatomy.ellipsoid_z_extent(LENS_SEMI_AXES, rot),
        om_deg=float(np.degrees(np.arctan2(-d[2], np.hypot(d[0], d[1])))),
        eam=[float(e[2]) for e in eams],
    )


def _overlap(lo, hi, b, t):
    return max(0.0, min(hi, t) - max(lo, b))


# (seed, yaw, pitch, roll, scan start, scan end): starts relative to the foramen magnum (fm) or the lenses, ends
# relative to the vertex; every in/out decision is >= 3 mm from its boundary (the borderline band is the benchmark's job)
HEAD_CASES = [
    (101, 4.0, 12.0, -5.0, ("fm", -30.0), ("vertex", 6.0)),
    (102, -6.0, -14.0, 6.0, ("fm", -8.0), ("vertex", -12.0)),
    (103, 8.0, 6.0, 7.0, ("fm", 5.0), ("vertex", 10.0)),
    (104, -3.0, -7.0, -7.0, ("fm", 9.0), ("vertex", -5.0)),
    (105, 9.0, 15.0, 3.0, ("lens_top", 5.0), ("vertex", 4.0)),
    (106, -8.0, -10.0, -3.0, ("lens_top", 12.0), ("vertex", 15.0)),
    (107, 2.0, 3.0, 5.0, ("lens", -1.0), ("vertex", -20.0)),
    (108, 0.0, -3.0, -6.0, ("fm", -12.0), ("vertex", 20.0)),
    (109, -10.0, 10.0, -8.0, ("fm", -25.0), ("vertex", -8.0)),
    (110, 5.0, -15.0, 0.0, ("fm", 14.0), ("vertex", 8.0)),
]


def _start(lm, spec):
    ref, off = spec
    if ref == "fm":
        return lm["fm"] + off
    lens_top = max(lm["lens"]) + lm["lens_half"]
    return (lens_top if ref == "lens_top" else float(np.mean(lm["lens"]))) + off


@pytest.fixture(scope="module")
def heads():
    out = []
    for seed, yaw, pitch, roll, start, end in HEAD_CASES:
        lm = head_landmarks(seed, yaw, pitch, roll)
        ph = simulate("head", seed=seed, matrix=128, yaw=yaw, pitch=pitch, roll=roll, z_start=_start(lm, start),
                      z_end=lm["vertex"] + end[1])
        t = ph.truth
        assert t["vertex_z_mm"] == pytest.approx(lm["vertex"]) and t["skull_base_z_mm"] == pytest.approx(lm["fm"])
        assert t["lens_z_mm"] == pytest.approx(lm["lens"])
        s = ph.scan
        m = compute_masks(s)
        z = s.z_positions_mm()
        got = dict(
            lens_in=R.lens_in_scan_range(s.hu, s.spacing, m["intracranial_mask"], z),
            lens_extent=R.lens_extent_in_range_mm(s.hu, s.spacing, m["intracranial_mask"], z),
            vertex=C.vertex_margin_mm(m["body_mask"], s.spacing, z),
            skull_base=C.skull_base_margin_mm(m["intracranial_mask"], s.spacing, z),
            om=P.orbitomeatal_angle_deg(s.hu, s.spacing, m["intracranial_mask"], z),
            excess=D.excess_scan_length_mm(m["body_mask"], m["intracranial_mask"], m["lung_mask"], s.spacing, z, "head"),
        )
        lo, hi = t["scan_bottom_mm"], t["scan_top_mm"]
        truth = dict(
            lens_in=t["lens_in_scan"],
            lens_extent=max(_overlap(lo, hi, c - lm["lens_half"], c + lm["lens_half"]) for c in lm["lens"]),
            # both canals (8 mm tall) and both globes (24 mm) well inside the range
            ears_and_eyes_in=lo < min(min(lm["eam"]), min(lm["lens"])) - 8.0 and hi > max(lm["lens"]) + 15.0,
            om=lm["om_deg"],
            excess=max(0.0, t["vertex_margin_mm"] - 10.0) + max(0.0, t["skull_base_margin_mm"] - 10.0),
        )
        out.append(dict(case=(seed, yaw, pitch, roll), t=t, got=got, truth=truth))
    return out


def test_head_cases_cover_both_sides_of_each_decision(heads):
    """The fixture must exercise lens in/out, skull base cut/included, vertex cut/included."""
    for key in ("lens_in_scan", "skull_base_in_scan", "vertex_in_scan"):
        assert {h["t"][key] for h in heads} == {True, False}, key


def test_lens_in_range_matches_truth(heads):
    """Lens inside the scanned range (simulator truth: lens voxels in the labels) for every case; the lens length
    inside the range matches the geometric overlap of the lens ellipsoid with the range within 2 mm."""
    correct = [(h["got"]["lens_in"] == 1.0) == h["truth"]["lens_in"] for h in heads]
    assert np.mean(correct) >= 0.98, [h["case"] for h, ok in zip(heads, correct) if not ok]
    err = np.array([h["got"]["lens_extent"] - h["truth"]["lens_extent"] for h in heads])
    assert np.abs(err).max() <= 2.0, err


def test_skull_base_and_vertex_cut_detection_with_pitch_and_roll(heads):
    """Cut vs included decided correctly for every case, margins within 3 mm where the landmark is included;
    the skull base is found in the head's own frame, so pitch and roll (up to 15 deg) no longer make it read low."""
    for h in heads:
        t, g = h["t"], h["got"]
        assert (g["vertex"] > 0) == t["vertex_in_scan"], h["case"]
        assert (g["skull_base"] > 0) == t["skull_base_in_scan"], h["case"]
        assert g["vertex"] == pytest.approx(t["vertex_margin_mm"], abs=3.0), h["case"]  # extrapolated when cut
        if t["skull_base_in_scan"]:
            assert g["skull_base"] == pytest.approx(t["skull_base_margin_mm"], abs=3.0), h["case"]
        else:
            assert g["skull_base"] == 0.0


def test_orbitomeatal_angle_matches_truth(heads):
    """OM-line angle (eye globes to external auditory canals) vs the phantom's landmark geometry: measured on
    every head holding both eyes and both canals, MAE <= 2 deg; where a landmark is cut or missing the IQM
    must read None (not a biased angle)."""
    full = [h for h in heads if h["truth"]["ears_and_eyes_in"]]
    assert len(full) >= 4 and all(h["got"]["om"] is not None for h in full)
    measured = [h for h in heads if h["got"]["om"] is not None]
    err = np.array([h["got"]["om"] - h["truth"]["om"] for h in measured])
    assert np.mean(np.abs(err)) <= 2.0 and np.abs(err).max() <= 3.0, err


def test_head_excess_length_matches_truth(heads):
    err = np.array([h["got"]["excess"] - h["truth"]["excess"] for h in heads])
    assert np.abs(err).max() <= 3.0, err
    assert max(h["truth"]["excess"] for h in heads) > 5.0  # the set has over-ranged scans


def test_lens_found_when_the_scan_starts_through_the_lens():
    """The scan's first slice cuts through the lenses (benchmark case: seed 8815, 256 matrix, 4.9 mm of lens in
    range). Only a small cap of each globe is in the scan; near the orbital roof the bone margin and the opening
    leave its core alone, so edge caps have their own size limit and rim test (before: no eye found, read 0)."""
    from phantoms import simulate
    from qc.pipeline import compute_masks

    ph = simulate("head", seed=8815, matrix=256, pitch=4.71731739812201, yaw=-6.38241651432546,
                  roll=-1.432982837993487, z_start=-24.557928526817033)
    assert ph.truth["lens_in_scan"]
    m = compute_masks(ph.scan)
    z = ph.scan.z_positions_mm()
    assert R.lens_in_scan_range(ph.scan.hu, ph.scan.spacing, m["intracranial_mask"], z) == 1.0
    # geometric overlap of the lens with the range: 4.89 mm (benchmark); the estimate reads within 2 mm of it
    assert R.lens_extent_in_range_mm(ph.scan.hu, ph.scan.spacing, m["intracranial_mask"], z) == pytest.approx(4.89, abs=2.0)


def test_lens_iqms_off_for_a_scan_without_cranium():
    """No cranial cavity (not a head): the lens IQMs are not measured rather than guessed."""
    hu = np.full((12, 64, 64), -1000.0, dtype=np.float32)
    hu[:, 16:48, 16:48] = 40.0
    cav = np.zeros(hu.shape, bool)
    z = np.arange(12) * 2.5
    assert R.lens_in_scan_range(hu, (2.5, 2.0, 2.0), cav, z) is None
    assert R.lens_extent_in_range_mm(hu, (2.5, 2.0, 2.0), cav, z) is None
    assert C.skull_base_margin_mm(cav, (2.5, 2.0, 2.0), z) is None


# ------------------------------------------------------------------ chest
ARMS_DOWN_SEEDS = (29, 34)  # seeds whose trunk is slim enough for the arms to fit the 500 mm field lowered
CHEST_CASES = [
    # seed, arms_up, yaw, shift_x, start (relative to the lung base), end (relative to the apex)
    (29, False, 5.0, 15.0, -15.0, 12.0),
    (34, False, -7.0, -20.0, 8.0, -10.0),
    (501, True, 3.0, 10.0, -25.0, -6.0),
    (502, True, -4.0, 0.0, 6.0, 20.0),
]


@pytest.fixture(scope="module")
def chests():
    out = []
    for seed, up, yaw, sx, start, end in CHEST_CASES:
        shape = anatomy.ChestShape.random(np.random.default_rng(seed), arms_up=up)
        # matrix 256: at 128 (3.9 mm pixels) the classical lung mask loses the lower lungs of slim phantoms
        # (seeds 29, 65, 85, 126: lung recall 0.2-0.3; detectors issue), which is not what is tested here
        ph = simulate("chest", seed=seed, matrix=256, arms_up=up, yaw=yaw, shift_x=sx,
                      z_start=shape.base_z + start, z_end=shape.apex_z + end)
        s, t = ph.scan, ph.truth
        assert t["arms_up"] == up
        m = compute_masks(s)
        z = s.z_positions_mm()
        got = dict(arms=P.arms_in_field_pct(s.hu, m["lung_mask"], s.spacing),
                   apex=C.lung_apex_margin_mm(m["lung_mask"], s.spacing, z),
                   base=C.lung_base_margin_mm(m["lung_mask"], s.spacing, z),
                   excess=D.excess_scan_length_mm(m["body_mask"], m["intracranial_mask"], m["lung_mask"], s.spacing, z,
                                                  "chest"))
        truth = dict(excess=max(0.0, t["lung_apex_margin_mm"] - 10.0) + max(0.0, t["lung_base_margin_mm"] - 10.0))
        out.append(dict(case=(seed, up), t=t, got=got, truth=truth))
    return out


def test_arms_in_field_separates_arms_down_from_up(chests):
    for c in chests:
        if c["t"]["arms_up"]:
            assert c["got"]["arms"] <= 10.0, c["case"]
        else:
            assert c["got"]["arms"] >= 90.0, c["case"]


def test_lung_apex_and_base_cut_detection_and_margins(chests):
    """Sub-slice ends (linear extrapolation of the lung area) give cut decisions and margins within 1.5 mm on
    5 mm slices."""
    for c in chests:
        t, g = c["t"], c["got"]
        assert (g["apex"] > 0) == t["apex_in_scan"] and (g["base"] > 0) == t["base_in_scan"], c["case"]
        if t["apex_in_scan"]:
            assert g["apex"] == pytest.approx(t["lung_apex_margin_mm"], abs=1.5), c["case"]
        if t["base_in_scan"]:
            assert g["base"] == pytest.approx(t["lung_base_margin_mm"], abs=1.5), c["case"]
    assert {c["t"]["apex_in_scan"] for c in chests} == {True, False}
    assert {c["t"]["base_in_scan"] for c in chests} == {True, False}


def test_chest_excess_length_matches_truth(chests):
    err = np.array([c["got"]["excess"] - c["truth"]["excess"] for c in chests])
    assert np.abs(err).max() <= 3.0, err
    assert max(c["truth"]["excess"] for c in chests) > 5.0


# ------------------------------------------------------------------ real head CT
def test_real_head_without_orbits_reads_lens_outside(shared_head_scan):
    """Real GE head, keeping only the slices above z = 45 mm (above the orbital roofs; the orbits lie at z ~ 0-25 mm
    in this volume): no lens may be reported in range (no false eye in real brain, skull and scalp). Not claimed:
    finding the eyes on the full scan; there the cranial-cavity mask misses the brain at orbit level (gantry tilt
    18.5 deg, 4.2 mm resampled slices) and the detection picks wrong structures."""
    from qc.io import Scan

    s = shared_head_scan
    z = s.z_positions_mm()
    keep = z > 45.0
    top = Scan(hu=s.hu[keep], spacing=s.spacing, origin=(s.origin[0], s.origin[1], float(z[keep][0])),
               fov=None if s.fov is None else np.asarray(s.fov)[keep], metadata=s.metadata)
    cav = compute_masks(top)["intracranial_mask"]
    assert cav.sum() * np.prod(top.spacing) > 100_000  # the brain is there (> 100 mL of cavity)
    assert R.lens_in_scan_range(top.hu, top.spacing, cav, top.z_positions_mm()) == 0.0
    assert R.lens_extent_in_range_mm(top.hu, top.spacing, cav, top.z_positions_mm()) == 0.0
