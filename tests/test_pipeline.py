"""assess(): end to end on phantoms and the shared real scans."""

from __future__ import annotations

import pytest

from qc.errors import UnsupportedRegionError
from qc.pipeline import assess
from tests.conftest import shared_path

JSON_KEYS = {"overall", "categories", "iqms", "region", "warnings", "versions"}


@pytest.mark.parametrize("fixture, region", [("head_phantom", "head"), ("chest_phantom", "chest")])
def test_assess_phantoms(request, fixture, region):
    ph = request.getfixturevalue(fixture)
    result = assess(ph.scan)
    assert result.region == region
    assert 0.0 <= result.overall <= 10.0
    d = result.to_json_dict()
    assert JSON_KEYS <= set(d)
    for cat in d["categories"].values():
        for term in cat["terms"]:
            assert {"iqm", "value", "unit", "coefficient", "contribution"} <= set(term)
    for iqm in d["iqms"].values():
        assert {"value", "unit", "direction", "status"} <= set(iqm)
    assert result.overall_intercept + sum(t.contribution for t in result.overall_terms) == pytest.approx(result.overall)
    assert set(result.timings_s) >= {"load", "segment", "metrics", "total"}
    assert result.versions["ctqc"]


def test_a_cut_apex_costs_the_most(chest_phantom):
    from phantoms import simulate

    result = assess(simulate("chest", seed=3, z_end=60.0).scan)
    cat, term, gain = result.worst_term()
    assert gain > 0
    assert (cat, term.item) == ("coverage", "apex_included")
    assert any("apex_included fails" in w for w in result.warnings)


def test_forced_region_disagreement_is_warned(head_phantom):
    result = assess(head_phantom.scan, region="chest")
    assert result.region == "chest"
    assert any("heuristic says head" in w for w in result.warnings)


def test_unknown_region_refused(head_phantom):
    with pytest.raises(UnsupportedRegionError, match="knee"):
        assess(head_phantom.scan, region="knee")


def test_shared_head_is_head():
    result = assess(shared_path("head_ct_ge_tilted"))
    assert result.region == "head"
    assert result.iqms["vertex_margin_mm"].value > 0
    assert result.scan["GantryTiltDeg"] == pytest.approx(18.5, abs=0.1)


def test_shared_abdomen_is_not_supported():
    with pytest.raises(UnsupportedRegionError, match="region not supported"):
        assess(shared_path("abdomen_ct_totalseg", "example_ct.nii.gz"))


def test_shared_cropped_chest_and_slices():
    assert assess(shared_path("chest_ct_cropped", "ct_cropped.nii.gz")).region == "chest"
    assert assess(shared_path("slices", "CT2_UNC.dcm")).region == "head"
    assert assess(shared_path("slices", "lungmask_lidc_0.dcm")).region == "chest"
