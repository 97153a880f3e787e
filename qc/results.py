"""Typed results (pydantic): one source of truth for the terminal tree, JSON, CSV and reports."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Status = Literal["pass", "warn", "fail", "info", "not_measured"]


class IQMResult(BaseModel):
    name: str
    value: float | None = Field(description="measured value in `unit`; None when not measurable on this scan")
    unit: str
    direction: str = Field(description="higher_is_better | lower_is_better | closer_to_target")
    status: Status = Field(description="vs the config's acceptable range: pass (inside), warn, fail (item score 0)")
    description: str = ""
    source: str = Field("", description="mask/detector/header that produced it")


class Term(BaseModel):
    """One term of a linear score: contribution = coefficient x feature."""

    iqm: str
    item: str
    value: float | None = Field(description="IQM value (raw, in unit)")
    unit: str = ""
    feature: float | None = Field(description="model input derived from the value (rubric item score 0-10, or z-score)")
    coefficient: float
    contribution: float
    ci_low: float | None = Field(None, description="95 % CI of the coefficient (fitted models)")
    ci_high: float | None = None
    feature_kind: str = "rubric item score (0-10)"
    status: Status = "info"


class CategoryScore(BaseModel):
    name: str
    description: str = ""
    score: float | None = Field(description="intercept + sum of term contributions; None when nothing was measurable")
    intercept: float = 0.0
    terms: list[Term] = []
    not_assessed: list[str] = Field([], description="items whose IQM could not be measured (or is planned)")


class OverallTerm(BaseModel):
    category: str
    score: float
    coefficient: float
    contribution: float
    ci_low: float | None = None
    ci_high: float | None = None


class Assessment(BaseModel):
    source: str
    region: str
    region_reason: str = ""
    region_probs: dict[str, float] | None = Field(default=None, description="P(head), P(chest), P(other) of the region model")
    overall: float | None
    overall_intercept: float = 0.0
    overall_terms: list[OverallTerm] = []
    categories: dict[str, CategoryScore]
    iqms: dict[str, IQMResult]
    model: dict = Field(default_factory=dict, description="config/model provenance")
    scan: dict = Field(default_factory=dict, description="shape, spacing and header facts (no patient identifiers)")
    warnings: list[str] = []
    timings_s: dict[str, float] = {}
    versions: dict[str, str] = {}

    def worst_term(self) -> tuple[str, Term, float] | None:
        """The term that costs the most points of the overall score. Rubric: (10 - item score) x item
        coefficient x category coefficient (what the overall gains if that item were perfect). Fitted model:
        -contribution x category coefficient (what it gains if that IQM were at the training mean)."""
        cat_coef = {t.category: t.coefficient for t in self.overall_terms}
        best = None
        for name, cat in self.categories.items():
            for t in cat.terms:
                if t.feature is None:
                    continue
                if t.feature_kind.startswith("rubric"):
                    loss = (10.0 - t.feature) * t.coefficient * cat_coef.get(name, 0.0)
                else:
                    loss = -t.contribution * cat_coef.get(name, 0.0)
                if best is None or loss > best[0]:
                    best = (loss, name, t)
        return None if best is None or best[0] <= 0 else (best[1], best[2], best[0])

    def to_json_dict(self) -> dict:
        return {
            "overall": self.overall,
            "region": self.region,
            "categories": {
                n: {"score": c.score, "intercept": c.intercept, "not_assessed": c.not_assessed,
                    "terms": [t.model_dump() for t in c.terms]}
                for n, c in self.categories.items()
            },
            "overall_terms": [t.model_dump() for t in self.overall_terms],
            "overall_intercept": self.overall_intercept,
            "iqms": {n: i.model_dump(exclude={"name"}) for n, i in self.iqms.items()},
            "warnings": self.warnings,
            "versions": self.versions,
            "source": self.source,
            "region_reason": self.region_reason,
            "region_probs": self.region_probs,
            "model": self.model,
            "scan": self.scan,
            "timings_s": self.timings_s,
        }

    def to_row(self) -> dict:
        """One flat row: overall, each category score, each IQM value (for CSV/audit tables)."""
        row = {"scan_id": self.source, "source": self.source, "region": self.region, "overall": self.overall}
        row.update({f"score_{n}": c.score for n, c in self.categories.items()})
        row.update({n: i.value for n, i in self.iqms.items()})
        row.update({f"status_{n}": i.status for n, i in self.iqms.items()})
        return row
