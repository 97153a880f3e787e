"""Fitting on ratings (statsmodels), fitted-model scoring, validation statistics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from qc.cli import app
from qc.config import load_config
from qc.errors import QCInputError
from regression.fit import FittedModel, fit_formula, fit_hierarchy, fit_ols
from regression.validate import agreement, bland_altman, icc

runner = CliRunner()


def test_coefficients_recovered_inside_95ci_in_95pct_of_200_repetitions():
    rng = np.random.default_rng(2024)
    a = np.array([0.8, -0.05, 0.3])  # raw-unit effects
    hits = np.zeros(len(a) + 1)
    for _ in range(200):
        X = pd.DataFrame({"q1": rng.normal(5, 2, 60), "q2": rng.normal(100, 30, 60), "q3": rng.normal(0, 4, 60)})
        y = pd.Series(6.0 + X.to_numpy() @ a + rng.normal(0, 1.0, 60))
        part, _ = fit_ols(X, y, "synthetic")
        sd, mean = X.std(ddof=1).to_numpy(), X.mean().to_numpy()
        truth_std = a * sd                      # coefficient on the sample-standardised IQM
        truth_b0 = 6.0 + float(mean @ a)        # intercept at the training mean
        for i, q in enumerate(X.columns):
            c = part["coefficients"][q]
            hits[i] += c["ci_low"] <= truth_std[i] <= c["ci_high"]
        hits[-1] += part["intercept"]["ci_low"] <= truth_b0 <= part["intercept"]["ci_high"]
    coverage = hits / 200
    assert np.all((coverage >= 0.91) & (coverage <= 0.99)), coverage


def _synthetic_study(n=80, readers=2, seed=0):
    cfg = load_config("chest")
    rng = np.random.default_rng(seed)
    cats = {c: list(dict.fromkeys(it.iqm for it in cat.items.values())) for c, cat in cfg.categories.items() if cat.items}
    iqm_names = sorted({q for qs in cats.values() for q in qs})
    iq = pd.DataFrame({q: rng.normal(10, 5, n) for q in iqm_names})
    iq.insert(0, "scan_id", [f"s{i}" for i in range(n)])
    # coefficients of magnitude 0.1-0.3: a near-zero draw would leave a one-item category with no signal to fit
    true = {c: 5 + iq[qs].to_numpy() @ (rng.choice([-1, 1], len(qs)) * rng.uniform(0.1, 0.3, len(qs)))
            for c, qs in cats.items()}
    overall = 1 + sum(0.15 * true[c] for c in cats)
    rows = []
    for r in range(readers):
        for i in range(n):
            row = {"scan_id": f"s{i}", "reader": f"R{r}"}
            row.update({c: true[c][i] + rng.normal(0, 0.5) for c in cats})
            row["overall"] = overall[i] + rng.normal(0, 0.3)
            rows.append(row)
    return cfg, iq, pd.DataFrame(rows), list(cats)


def test_fit_hierarchy_and_fitted_scoring_is_exact():
    cfg, iq, ra, cats = _synthetic_study()
    model, _warnings = fit_hierarchy(iq, ra, cfg)
    assert set(model["categories"]) == set(cats)
    assert model["provenance"]["n_readers"] == 2 and model["provenance"]["n_scans"] == 80
    assert model["provenance"]["inter_reader_icc"]["coverage"]["icc2_1"] > 0.5
    for part in model["categories"].values():
        assert part["r2"] > 0.3 and {"estimate", "std_err", "ci_low", "ci_high", "p_value"} <= set(part["intercept"])
    scorer = FittedModel(json.loads(json.dumps(model, default=float)), cfg)
    values = {q: float(v) for q, v in iq.iloc[0, 1:].items()}
    values["lung_base_margin_mm"] = None  # not measured -> training mean, contribution 0
    overall, terms, cat_scores = scorer.score(values)
    for name, c in cat_scores.items():
        if c.score is not None:
            assert c.intercept + sum(t.contribution for t in c.terms) == pytest.approx(c.score, abs=1e-12)
    assert model["overall"]["intercept"]["estimate"] + sum(t.contribution for t in terms) == pytest.approx(overall, abs=1e-12)
    base = next(t for t in cat_scores["coverage"].terms if t.iqm == "lung_base_margin_mm")
    assert base.contribution == 0.0 and any("imputed" in s for s in cat_scores["coverage"].not_assessed)


def test_fit_errors_are_clear():
    cfg, iq, ra, _ = _synthetic_study(n=30)
    with pytest.raises(QCInputError, match="lacks column.*global_noise_index_hu"):
        fit_hierarchy(iq.drop(columns="global_noise_index_hu"), ra, cfg)
    const = iq.copy()
    const["ctdivol_mgy"] = 8.0
    with pytest.raises(QCInputError, match="constant.*ctdivol_mgy"):
        fit_hierarchy(const, ra, cfg)
    with pytest.raises(QCInputError, match="too few complete rows"):
        fit_hierarchy(iq.head(3), ra, cfg)
    with pytest.raises(QCInputError, match="ratings lack"):
        fit_hierarchy(iq, ra.drop(columns="noise"), cfg)
    with_nan = iq.copy()
    with_nan.loc[:4, "global_noise_index_hu"] = np.nan
    model, _ = fit_hierarchy(with_nan, ra, cfg)
    assert model["categories"]["noise"]["dropped"] == 5 and model["categories"]["noise"]["n"] == 25


def test_icc_matches_shrout_fleiss_published_example():
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; published ICC(1,1)=.17, ICC(2,1)=.29, ICC(3,1)=.71
    wide = pd.DataFrame([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    r = icc(wide)
    assert r["icc1_1"] == pytest.approx(0.17, abs=0.005)
    assert r["icc2_1"] == pytest.approx(0.29, abs=0.005)
    assert r["icc3_1"] == pytest.approx(0.71, abs=0.005)


def test_bland_altman_by_hand():
    r = bland_altman(np.array([3.0, 5.0, 7.0]), np.array([2.0, 3.0, 4.0]))  # differences 1, 2, 3
    assert r["bias"] == pytest.approx(2.0) and r["sd_diff"] == pytest.approx(1.0)
    assert (r["loa_low"], r["loa_high"]) == (pytest.approx(0.04), pytest.approx(3.96))


def test_agreement_statistics_on_perfect_and_shifted_predictions():
    ref = np.linspace(0, 4, 20)
    a = agreement(ref + 0.5, ref)
    assert a["plcc"] == pytest.approx(1.0) and a["srcc"] == pytest.approx(1.0) and a["krcc"] == pytest.approx(1.0)
    assert a["ldctiqa_score"] == pytest.approx(3.0)
    assert a["mad"] == pytest.approx(0.5) and a["rmse"] == pytest.approx(0.5) and a["bias"] == pytest.approx(0.5)
    assert a["icc3_1"] == pytest.approx(1.0) and a["icc2_1"] < 1.0


def test_formula_mode():
    rng = np.random.default_rng(1)
    t = pd.DataFrame({"window": rng.integers(0, 2, 50), "dose": rng.integers(0, 2, 50), "snr": rng.normal(5, 1, 50),
                      "brisque": rng.normal(30, 5, 50)})
    t["score"] = 2 + t["window"] + 0.5 * t["dose"] + 0.3 * t["snr"] + rng.normal(0, 0.5, 50)
    res = fit_formula(t, "score ~ window + dose + snr + brisque")
    assert res["n"] == 50 and set(res["coefficients"]) == {"Intercept", "window", "dose", "snr", "brisque"}
    assert 0.5 < res["plcc"] <= 1 and res["rmse"] > 0
    with pytest.raises(QCInputError, match="cannot be fitted"):
        fit_formula(t, "score ~ nonexistent")


def test_cli_fit_assess_with_model_validate(tmp_path, chest_phantom):
    cfg, iq, ra, cats = _synthetic_study()
    iq.to_csv(tmp_path / "iqms.csv", index=False)
    ra.to_csv(tmp_path / "ratings.csv", index=False)
    r = runner.invoke(app, ["fit", "--iqms", str(tmp_path / "iqms.csv"), "--ratings", str(tmp_path / "ratings.csv"),
                            "--out", str(tmp_path / "model.json"), "--region", "chest"])
    assert r.exit_code == 0, r.output
    assert "intercept" in r.output and (tmp_path / "model_diagnostics" / "overall_diagnostics.png").exists()
    model = json.loads((tmp_path / "model.json").read_text())
    assert {"categories", "overall", "provenance"} <= set(model)
    # assess with the fitted model: the explain tree shows CIs
    from phantoms import write_phantom

    scan = write_phantom(chest_phantom, tmp_path / "ph")["scan"]
    r = runner.invoke(app, ["assess", str(scan), "--explain", "--model", str(tmp_path / "model.json")])
    assert r.exit_code == 0, r.output
    assert "95% CI" in r.output and "fitted" in r.output
    # validate in-sample predictions against the ratings
    from regression.fit import FittedModel

    scorer = FittedModel(model, cfg)
    rows = []
    for _, row in iq.iterrows():
        ov, _t, cs = scorer.score({q: float(v) for q, v in row.iloc[1:].items()})
        rows.append({"scan_id": row["scan_id"], "overall": ov, **{f"score_{c}": cs[c].score for c in cats}})
    pd.DataFrame(rows).to_csv(tmp_path / "pred.csv", index=False)
    r = runner.invoke(app, ["validate", "--pred", str(tmp_path / "pred.csv"), "--ratings", str(tmp_path / "ratings.csv"),
                            "--out", str(tmp_path / "val")])
    assert r.exit_code == 0, r.output
    val = pd.read_csv(tmp_path / "val" / "validation.csv")
    assert set(val["score"]) == set(cats) | {"overall"}
    assert (val["plcc"] > 0.5).all() and (tmp_path / "val" / "bland_altman_overall.png").exists()
    r = runner.invoke(app, ["fit", "--iqms", str(tmp_path / "nope.csv"), "--ratings", str(tmp_path / "ratings.csv"),
                            "--out", str(tmp_path / "m.json")])
    assert r.exit_code == 2 and "not found" in r.output


def test_collinear_terms_warned():
    rng = np.random.default_rng(3)
    q1 = rng.normal(0, 1, 50)
    X = pd.DataFrame({"q1": q1, "q2": 2 * q1 + rng.normal(0, 0.05, 50), "q3": rng.normal(0, 1, 50)})
    part, warnings = fit_ols(X, pd.Series(q1 + rng.normal(0, 1, 50)), "collinear")
    assert part["vif"]["q2"] > 5 and any("VIF" in w and "q2" in w for w in warnings)
