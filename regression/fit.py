"""Fitting the hierarchy on local ratings with statsmodels OLS, and scoring with a fitted model.

Level 1, per category c:  rating_c = b0 + sum_i b_i z_i + e,  z_i = (IQM_i - mean_i) / sd_i (training
mean and SD, stored in the model). Level 2:  overall = B0 + sum_c B_c rating_c + e, on the readers'
category ratings. Every coefficient is stored with std error, 95 % CI and p-value; R2, adjusted R2, n and
VIF (variance inflation factors) are stored per model, and VIF > 5 raises a collinearity warning.

Missing data (documented handling, never a silent wrong fit):
* an IQM column the config asks for is absent from IQMS.csv -> error naming it;
* a column that is constant in the rows used -> error naming it (its coefficient is not estimable);
* rows with NaN in the category's IQMs or rating are dropped for that category's fit and counted in the
  model's ``dropped`` field; after dropping, n must exceed the number of parameters + 1, else error;
* at prediction, an IQM not measured on the scan is imputed with its training mean (z = 0, contribution 0)
  and reported as not measured.

Models are saved as JSON (never pickle).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from qc.errors import ConfigError, QCInputError

SCHEMA = "ctqc-model/1"
VIF_WARN = 5.0


def _coef_dict(res, name: str) -> dict:
    ci = res.conf_int(alpha=0.05)
    return {"estimate": float(res.params[name]), "std_err": float(res.bse[name]), "ci_low": float(ci.loc[name, 0]),
            "ci_high": float(ci.loc[name, 1]), "p_value": float(res.pvalues[name])}


def _vif(X: pd.DataFrame) -> dict[str, float]:
    from statsmodels.stats.outliers_influence import variance_inflation_factor

    if X.shape[1] < 2:
        return {c: 1.0 for c in X.columns}
    Xc = np.column_stack([np.ones(len(X)), X.to_numpy(float)])
    return {c: float(variance_inflation_factor(Xc, i + 1)) for i, c in enumerate(X.columns)}


def fit_ols(X: pd.DataFrame, y: pd.Series, what: str, standardize: bool = True) -> tuple[dict, list[str]]:
    """OLS of y on the columns of X (optionally z-scored). Returns the JSON-able model part and warnings."""
    import statsmodels.api as sm

    warnings: list[str] = []
    data = pd.concat([X, y.rename("__y__")], axis=1)
    keep = data.notna().all(axis=1)
    dropped = int((~keep).sum())
    data = data[keep]
    n, p = len(data), X.shape[1]
    if n <= p + 1:
        raise QCInputError(f"{what}: too few complete rows ({n}) for {p} terms + intercept (need more than {p + 1})")
    Xd = data[X.columns].astype(float)
    sd = Xd.std(ddof=1)
    const = [c for c in Xd.columns if not np.isfinite(sd[c]) or sd[c] == 0]
    if const:
        raise QCInputError(f"{what}: column(s) constant over the {n} rows used, not estimable: {', '.join(const)}")
    mean = Xd.mean()
    Z = (Xd - mean) / sd if standardize else Xd
    res = sm.OLS(data["__y__"].astype(float), sm.add_constant(Z, has_constant="add")).fit()
    vif = _vif(Z)
    high = {k: round(v, 1) for k, v in vif.items() if v > VIF_WARN}
    if high:
        warnings.append(f"{what}: collinear terms (VIF > {VIF_WARN:g}): {high}")
    part = {
        "intercept": _coef_dict(res, "const"),
        "coefficients": {c: _coef_dict(res, c) for c in X.columns},
        "r2": float(res.rsquared), "r2_adj": float(res.rsquared_adj), "n": int(n), "dropped": dropped,
        "residual_sd": float(math.sqrt(res.scale)), "vif": vif,
    }
    if standardize:
        part["standardization"] = {c: {"mean": float(mean[c]), "sd": float(sd[c])} for c in X.columns}
    part["_fitted"] = res.fittedvalues.to_numpy().tolist()
    part["_resid"] = res.resid.to_numpy().tolist()
    return part, warnings


def average_ratings(ratings: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, dict]:
    """Mean rating per scan over readers, and inter-reader ICC(2,1)/ICC(3,1) per column when readers are given."""
    from regression.validate import icc

    agreement: dict = {}
    if "reader" in ratings.columns and ratings["reader"].nunique() > 1:
        for col in columns:
            sub = ratings[["scan_id", "reader", col]].dropna()
            try:
                agreement[col] = icc(sub.pivot_table(index="scan_id", columns="reader", values=col))
            except QCInputError as exc:
                agreement[col] = {"error": exc.reason}
    mean = ratings.groupby("scan_id", sort=False)[columns].mean().reset_index()
    return mean, agreement


def _read_csv(path, what: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise QCInputError(f"{what} file not found", path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise QCInputError(f"{what} is not a readable CSV ({str(exc).splitlines()[0]})", path) from None
    if "scan_id" not in df.columns:
        raise QCInputError(f"{what} has no 'scan_id' column", path)
    df["scan_id"] = df["scan_id"].astype(str)
    return df


def fit_hierarchy(iqms: pd.DataFrame, ratings: pd.DataFrame, config, sources: dict | None = None) -> tuple[dict, list[str]]:
    """Fit level 1 (each category on its IQMs) and level 2 (overall on category ratings)."""
    cats = [c for c, cat in config.categories.items() if cat.items]
    missing_r = [c for c in cats + ["overall"] if c not in ratings.columns]
    if missing_r:
        raise QCInputError(f"ratings lack column(s): {', '.join(missing_r)}")
    mean_r, agreement = average_ratings(ratings, cats + ["overall"])
    table = iqms.merge(mean_r, on="scan_id", how="inner")
    if table.empty:
        raise QCInputError("no scan_id in common between the IQM table and the ratings")
    warnings: list[str] = []
    model = {"schema": SCHEMA, "region": config.region, "categories": {}, "overall": None}
    for c in cats:
        cols = list(dict.fromkeys(it.iqm for it in config.categories[c].items.values()))
        absent = [q for q in cols if q not in table.columns]
        if absent:
            raise QCInputError(f"IQM table lacks column(s) needed for '{c}': {', '.join(absent)}")
        part, w = fit_ols(table[cols], table[c], f"category '{c}'")
        model["categories"][c] = part
        warnings += w
    part, w = fit_ols(table[cats], table["overall"], "overall", standardize=False)
    model["overall"] = part
    warnings += w
    n_readers = int(ratings["reader"].nunique()) if "reader" in ratings.columns else 1
    model["provenance"] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "config_region": config.region,
        "n_ratings": int(len(ratings)), "n_scans": int(len(table)), "n_readers": n_readers,
        "inter_reader_icc": agreement, "warnings": warnings, **(sources or {}),
    }
    from qc import __version__

    model["provenance"]["software"] = f"ctqc {__version__}"
    return model, warnings


def save_model(model: dict, path) -> None:
    clean = json.loads(json.dumps(model, default=float))
    for part in list(clean["categories"].values()) + [clean["overall"]]:
        part.pop("_fitted", None)
        part.pop("_resid", None)
    Path(path).write_text(json.dumps(clean, indent=1))


def load_model(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("model file not found", path) from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("model file is not valid JSON", path) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(f"not a ctqc model (expected schema '{SCHEMA}')", path)
    for name, part in list(data.get("categories", {}).items()) + [("overall", data.get("overall"))]:
        if not isinstance(part, dict) or "intercept" not in part or "coefficients" not in part:
            raise ConfigError(f"model part '{name}' lacks intercept/coefficients", path)
    return data


class FittedModel:
    """Scores IQM values with a fitted JSON model; statuses still come from the config's acceptable ranges."""

    def __init__(self, model: dict, config, path: str = ""):
        from regression.model import HierarchyModel

        if model.get("region") != config.region:
            raise ConfigError(f"model is for {model.get('region')}, scan is {config.region}", path)
        self.model, self.config, self.path = model, config, path
        self._rubric = HierarchyModel(config)

    def iqm_status(self, values):
        return self._rubric.iqm_status(values)

    def score(self, values: dict, units: dict | None = None):
        from qc.results import CategoryScore, OverallTerm, Term

        units = units or {}
        item_of = {it.iqm: n for c in self.config.categories.values() for n, it in c.items.items()}
        status = self.iqm_status(values)
        cats = {}
        for cname, part in self.model["categories"].items():
            terms, not_measured = [], []
            for iqm, coef in part["coefficients"].items():
                st = part["standardization"][iqm]
                v = values.get(iqm)
                if v is None or not math.isfinite(v):
                    z = 0.0
                    not_measured.append(f"{iqm} not measured: imputed training mean (contribution 0)")
                else:
                    z = (v - st["mean"]) / st["sd"]
                terms.append(Term(iqm=iqm, item=item_of.get(iqm, iqm), value=v, unit=units.get(iqm, ""), feature=z,
                                  coefficient=coef["estimate"], contribution=coef["estimate"] * z,
                                  ci_low=coef["ci_low"], ci_high=coef["ci_high"], feature_kind="z-score",
                                  status=status.get(iqm, "info")))
            b0 = part["intercept"]["estimate"]
            cats[cname] = CategoryScore(name=cname, description=self.config.categories[cname].description
                                        if cname in self.config.categories else "",
                                        score=b0 + sum(t.contribution for t in terms), intercept=b0, terms=terms,
                                        not_assessed=not_measured)
        for cname, cat in self.config.categories.items():
            if cname not in cats:
                cats[cname] = CategoryScore(name=cname, description=cat.description, score=None,
                                            not_assessed=[f"(planned) {cat.planned}" if cat.planned else "not in model"])
        ov = self.model["overall"]
        terms = []
        for cname, coef in ov["coefficients"].items():
            s = cats[cname].score
            terms.append(OverallTerm(category=cname, score=s, coefficient=coef["estimate"],
                                     contribution=coef["estimate"] * s, ci_low=coef["ci_low"], ci_high=coef["ci_high"]))
        overall = ov["intercept"]["estimate"] + sum(t.contribution for t in terms)
        return overall, terms, cats


def fit_formula(table: pd.DataFrame, formula: str) -> dict:
    """Free-form statsmodels formula fit (seed replication, e.g. Chest CT-IQA's "score ~ window + dose + snr +
    brisque"), with in-sample PLCC, SRCC and RMSE of fitted vs observed."""
    import statsmodels.formula.api as smf
    from patsy import PatsyError
    from scipy import stats

    try:
        res = smf.ols(formula, data=table).fit()
    except (PatsyError, ValueError, KeyError) as exc:
        raise QCInputError(f"formula '{formula}' cannot be fitted on this table: {str(exc).splitlines()[0]}") from None
    y = res.model.endog
    f = res.fittedvalues.to_numpy()
    return {
        "schema": "ctqc-formula/1", "formula": formula, "n": int(res.nobs), "r2": float(res.rsquared),
        "coefficients": {k: _coef_dict(res, k) for k in res.params.index},
        "plcc": float(stats.pearsonr(f, y)[0]), "srcc": float(stats.spearmanr(f, y)[0]),
        "rmse": float(np.sqrt(np.mean((f - y) ** 2))),
    }


def diagnostic_plots(model: dict, out_dir) -> list[Path]:
    """Residuals vs fitted and normal Q-Q plot per fitted part (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    from qc.safe_names import safe_child

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    parts = list(model["categories"].items()) + [("overall", model["overall"])]
    for name, part in parts:
        if "_resid" not in part:
            continue
        fig, ax = plt.subplots(1, 2, figsize=(9, 4))
        ax[0].scatter(part["_fitted"], part["_resid"], s=10)
        ax[0].axhline(0, color="k", lw=0.8)
        ax[0].set(xlabel="fitted", ylabel="residual", title=f"{name}: residuals (R2 {part['r2']:.2f})")
        stats.probplot(part["_resid"], dist="norm", plot=ax[1])
        ax[1].set_title(f"{name}: normal Q-Q")
        fig.tight_layout()
        p = safe_child(out, name, "_diagnostics.png")  # names come from the config/model: keep them inside out
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    return paths
