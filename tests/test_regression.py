"""Rubric model: item scores, exact contributions, renormalisation of unmeasured items."""

from __future__ import annotations

import numpy as np
import pytest

from qc.config import load_config
from regression.model import HierarchyModel, item_score


@pytest.mark.parametrize(
    "value, acc, zero, expected",
    [
        (6.0, (None, 6.0), (None, 15.0), 10.0),
        (10.5, (None, 6.0), (None, 15.0), 5.0),
        (20.0, (None, 6.0), (None, 15.0), 0.0),
        (-7.5, (0.0, 25.0), (-15.0, 70.0), 5.0),
        (47.5, (0.0, 25.0), (-15.0, 70.0), 5.0),
        (12.0, (0.0, 25.0), (-15.0, 70.0), 10.0),
    ],
)
def test_item_score(value, acc, zero, expected):
    assert item_score(value, acc, zero) == pytest.approx(expected)


@pytest.mark.parametrize("region", ["head", "chest"])
def test_contributions_sum_exactly_to_scores(region):
    cfg = load_config(region)
    model = HierarchyModel(cfg)
    iqms = {it.iqm for c in cfg.categories.values() for it in c.items.values()}
    rng = np.random.default_rng(1)
    for _ in range(50):
        values = {n: (None if rng.random() < 0.2 else float(rng.normal(10, 40))) for n in iqms}
        overall, terms, cats = model.score(values)
        for cat in cats.values():
            if cat.score is None:
                assert not cat.terms
                continue
            assert cat.intercept + sum(t.contribution for t in cat.terms) == pytest.approx(cat.score, abs=1e-12)
            assert sum(t.coefficient for t in cat.terms) == pytest.approx(1.0)
            assert 0.0 <= cat.score <= 10.0
        if overall is not None:
            assert cfg.overall.intercept + sum(t.contribution for t in terms) == pytest.approx(overall, abs=1e-12)
            assert sum(t.coefficient for t in terms) == pytest.approx(1.0)


def test_unmeasured_item_is_reported_and_weights_renormalised():
    model = HierarchyModel(load_config("head"))
    _overall, _terms, cats = model.score({"vertex_margin_mm": 10.0, "skull_base_margin_mm": None})
    cov = cats["coverage"]
    assert len(cov.terms) == 1 and cov.terms[0].coefficient == pytest.approx(1.0)
    assert any("skull_base_margin_mm not measured" in s for s in cov.not_assessed)
    assert cats["radiation_protection"].score is None  # its only item's IQM was not given
    assert cats["radiation_protection"].not_assessed == ["lenses_outside_range (lens_extent_in_range_mm not measured)"]


def test_overall_none_when_nothing_measured():
    overall, terms, _ = HierarchyModel(load_config("chest")).score({})
    assert overall is None and terms == []
