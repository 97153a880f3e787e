"""The hierarchy as linear models.

Level 1 (per category): score_c = b0_c + sum_i b_i * f_i, with f_i the item feature. For the default
rubric, f_i is the item score (0-10, :func:`item_score`) and b_i = w_i / sum(w_j over measured items),
so a category with all items perfect scores 10. Level 2: overall = B0 + sum_c B_c * score_c with
B_c = W_c / sum(W over scored categories).

Items whose IQM could not be measured on a scan (tag absent, single slice, planned category) are left
out and the remaining weights renormalised; the coefficients actually used are the ones reported, so
contributions + intercept equal each score exactly. Fitted statsmodels models (``qc fit``) plug in
with z-scored features and their own coefficients.
"""

from __future__ import annotations

import math

from qc.config import HierarchyConfig, Item
from qc.results import CategoryScore, OverallTerm, Term


def item_score(value: float, acceptable, zero_at) -> float:
    """Rubric item score on 0-10: 10 for value inside [acceptable], 0 at or beyond [zero_at], linear between.

    ``None`` bounds are open. Example: acceptable [null, 6], zero_at [null, 15]: 6 -> 10, 10.5 -> 5, 15 -> 0."""
    a_lo, a_hi = acceptable
    z_lo, z_hi = zero_at
    if a_lo is not None and value < a_lo:
        return max(0.0, 10.0 * (value - z_lo) / (a_lo - z_lo))
    if a_hi is not None and value > a_hi:
        return max(0.0, 10.0 * (z_hi - value) / (z_hi - a_hi))
    return 10.0


def status_from_score(score: float | None) -> str:
    if score is None:
        return "not_measured"
    if score >= 10.0:
        return "pass"
    return "fail" if score <= 0.0 else "warn"


class HierarchyModel:
    """Scores IQM values with a hierarchy config (rubric coefficients)."""

    def __init__(self, config: HierarchyConfig):
        self.config = config

    def item_feature(self, item: Item, value: float | None) -> float | None:
        if value is None or not math.isfinite(value):
            return None
        return item_score(value, item.acceptable, item.zero_at)

    def score(self, values: dict[str, float | None], units: dict[str, str] | None = None):
        units = units or {}
        cats: dict[str, CategoryScore] = {}
        for cname, cat in self.config.categories.items():
            measured = []
            not_assessed = []
            for iname, item in cat.items.items():
                f = self.item_feature(item, values.get(item.iqm))
                (measured if f is not None else not_assessed).append((iname, item, f))
            if cat.planned and not cat.items:
                not_assessed_names = [f"(planned) {cat.planned}"]
            else:
                not_assessed_names = [f"{n} ({it.iqm} not measured)" for n, it, _ in not_assessed]
            wsum = sum(it.weight for _, it, _ in measured)
            terms = []
            for iname, item, f in measured:
                coef = item.weight / wsum if wsum > 0 else 0.0
                terms.append(Term(iqm=item.iqm, item=iname, value=values.get(item.iqm), unit=units.get(item.iqm, ""),
                                  feature=f, coefficient=coef, contribution=coef * f, status=status_from_score(f)))
            score = cat.intercept + sum(t.contribution for t in terms) if terms else None
            cats[cname] = CategoryScore(name=cname, description=cat.description, score=score, intercept=cat.intercept,
                                        terms=terms, not_assessed=not_assessed_names)
        scored = {n: c.score for n, c in cats.items() if c.score is not None}
        weights = self.config.overall.weights
        wsum = sum(weights[n] for n in scored)
        overall_terms = [
            OverallTerm(category=n, score=s, coefficient=weights[n] / wsum, contribution=weights[n] / wsum * s)
            for n, s in scored.items()
        ] if wsum > 0 else []
        overall = self.config.overall.intercept + sum(t.contribution for t in overall_terms) if overall_terms else None
        return overall, overall_terms, cats

    def iqm_status(self, values: dict[str, float | None]) -> dict[str, str]:
        """Status of each IQM against the acceptable range of the (first) item that scores it."""
        out = {}
        for cat in self.config.categories.values():
            for item in cat.items.values():
                if item.iqm not in out:
                    out[item.iqm] = status_from_score(self.item_feature(item, values.get(item.iqm)))
        return out
