"""Agreement between predicted scores and radiologists' ratings, with the statistics of the head-CT and
LDCTIQA literature: ICC(2,1) and ICC(3,1) (Shrout & Fleiss 1979, via pingouin), MAD, MAPE, paired t-test,
Bland-Altman (Bland & Altman 1986: bias and 95 % limits of agreement, bias +/- 1.96 SD of the
differences), PLCC, SRCC, KRCC, RMSE and the LDCTIQA challenge score |PLCC| + |SRCC| + |KRCC|
(Lee et al. 2025)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qc.errors import QCInputError


def icc(wide: pd.DataFrame) -> dict:
    """ICC(1,1), ICC(2,1) and ICC(3,1) of a targets x raters table (complete rows only), via pingouin."""
    import pingouin as pg

    wide = wide.dropna()
    if len(wide) < 3 or wide.shape[1] < 2:
        raise QCInputError(f"ICC needs >= 3 complete targets and >= 2 raters (got {len(wide)} x {wide.shape[1]})")
    long = wide.reset_index(names="target").melt(id_vars="target", var_name="rater", value_name="rating")
    res = pg.intraclass_corr(data=long, targets="target", raters="rater", ratings="rating").set_index("Type")
    out = {}
    # pingouin < 0.7 names them ICC1/ICC2/ICC3; 0.7+ ICC(1,1)/ICC(A,1)/ICC(C,1) (McGraw & Wong naming:
    # A = absolute agreement = Shrout-Fleiss ICC(2,1), C = consistency = ICC(3,1))
    names = {"icc1_1": ("ICC1", "ICC(1,1)"), "icc2_1": ("ICC2", "ICC(A,1)"), "icc3_1": ("ICC3", "ICC(C,1)")}
    for key, options in names.items():
        typ = next(t for t in options if t in res.index)
        out[key] = float(res.loc[typ, "ICC"])
        ci = res.loc[typ, "CI95"] if "CI95" in res.columns else res.loc[typ, "CI95%"]
        out[key + "_ci"] = [float(ci[0]), float(ci[1])]
    return out


def bland_altman(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Bias = mean(pred - ref); limits of agreement = bias -/+ 1.96 SD(pred - ref) (SD with n - 1)."""
    d = np.asarray(pred, float) - np.asarray(ref, float)
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    return {"bias": bias, "sd_diff": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def agreement(pred: np.ndarray, ref: np.ndarray) -> dict:
    from scipy import stats

    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    n = len(pred)
    if n < 3:
        raise QCInputError(f"agreement needs at least 3 paired scores (got {n})")
    out = {"n": n}
    out.update(icc(pd.DataFrame({"pred": pred, "ref": ref})))
    err = pred - ref
    out["mad"] = float(np.mean(np.abs(err)))
    nz = ref != 0
    out["mape_pct"] = float(np.mean(np.abs(err[nz]) / np.abs(ref[nz])) * 100) if nz.any() else float("nan")
    t = stats.ttest_rel(pred, ref)
    out["paired_t"], out["paired_t_p"] = float(t.statistic), float(t.pvalue)
    out.update(bland_altman(pred, ref))
    const = np.std(pred) == 0 or np.std(ref) == 0
    out["plcc"] = float("nan") if const else float(stats.pearsonr(pred, ref)[0])
    out["srcc"] = float("nan") if const else float(stats.spearmanr(pred, ref)[0])
    out["krcc"] = float("nan") if const else float(stats.kendalltau(pred, ref)[0])
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    out["ldctiqa_score"] = abs(out["plcc"]) + abs(out["srcc"]) + abs(out["krcc"])
    return out


def _pred_column(pred: pd.DataFrame, name: str) -> str | None:
    for c in (name, f"score_{name}"):
        if c in pred.columns:
            return c
    return None


def _paired(pred: pd.DataFrame, mean_r: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, mean rating) for the scans that have both."""
    p = pred[["scan_id", _pred_column(pred, name)]].set_axis(["scan_id", "__pred__"], axis=1)
    m = p.merge(mean_r[["scan_id", name]], on="scan_id").dropna()
    return m["__pred__"].to_numpy(float), m[name].to_numpy(float)


def validate(pred: pd.DataFrame, ratings: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Agreement per score column present in both tables (category names or `score_<category>`, and overall).
    Ratings from several readers are averaged per scan; inter-reader ICC is returned separately."""
    from regression.fit import average_ratings

    cols = [c for c in ratings.columns if c not in ("scan_id", "reader") and _pred_column(pred, c)]
    if not cols:
        raise QCInputError("no score column in common between predictions and ratings")
    mean_r, inter = average_ratings(ratings, cols)
    rows = []
    for c in cols:
        p, r = _paired(pred, mean_r, c)
        if len(p) < 3:
            continue
        rows.append({"score": c, **agreement(p, r)})
    if not rows:
        raise QCInputError("fewer than 3 scans with both a prediction and a rating")
    table = pd.DataFrame(rows)
    return table, inter


def bland_altman_plots(pred: pd.DataFrame, ratings: pd.DataFrame, table: pd.DataFrame, out_dir) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regression.fit import average_ratings

    from qc.safe_names import safe_child

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mean_r, _ = average_ratings(ratings, list(table["score"]))
    paths = []
    for _, row in table.iterrows():
        c = row["score"]
        p, r = _paired(pred, mean_r, c)
        avg, diff = (p + r) / 2, p - r
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(avg, diff, s=10)
        for y, ls in ((row["bias"], "-"), (row["loa_low"], "--"), (row["loa_high"], "--")):
            ax.axhline(y, color="k", ls=ls, lw=0.8)
        ax.set(xlabel="mean of prediction and rating", ylabel="prediction - rating",
               title=f"{c}: bias {row['bias']:.2f}, LoA [{row['loa_low']:.2f}, {row['loa_high']:.2f}]")
        fig.tight_layout()
        p = safe_child(out, f"bland_altman_{c}", ".png")  # c is a CSV column name: keep it inside out
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    return paths
