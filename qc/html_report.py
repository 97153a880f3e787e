"""Self-contained HTML reports: one scan (:func:`write_scan_report`) and a whole audit store
(:func:`write_group_report`). Figures are matplotlib PNGs embedded as base64 ``data:`` URIs; there are no
external assets, scripts or fonts, so a report can be mailed or archived as one file.

Individual report: overall score, region, model; axial/coronal/sagittal views through the body centroid in
the scan's display window with the body-mask outline (the scan is reloaded with :func:`qc.io.load_scan` and
:func:`qc.pipeline.compute_masks`); the explain tree as a table (overall <- categories <- terms with value,
unit, direction, item score/feature, coefficient and contribution); the term that costs the most; IQMs
measured but not scored; warnings.

Group report: counts; box plots of category and overall scores per protocol and per scanner; a control chart
of the overall score over time (study_date, else assessed_at) with mean +- 3 SD limits per region;
per-IQM failure rates; global noise index vs water-equivalent diameter (``water_equivalent_diameter_mm``
when stored, else CTDIvol); the per-protocol summary table, the lowest-scoring scans and the errors.
Patient identifiers never appear (the store holds only hashes, and the report does not show those).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from qc.errors import QCInputError
from qc.results import Assessment

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d2330;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d5d9e0;padding-bottom:4px}
.muted{color:#667085} .big{font-size:40px;font-weight:700} .kpis{display:flex;gap:28px;flex-wrap:wrap;margin:12px 0}
.kpi{background:#f3f5f8;border-radius:8px;padding:10px 16px} .kpi b{display:block;font-size:22px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border-bottom:1px solid #e4e7ec;padding:3px 8px;text-align:left}
th{background:#f3f5f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.cat td{font-weight:600;background:#fafbfc} tr.term td:first-child{padding-left:22px} tr.na td{color:#98a2b3}
.pass{color:#067647} .warn{color:#b54708} .fail{color:#d92d20;font-weight:700} .info{color:#175cd3} .not_measured{color:#98a2b3}
img{max-width:100%} .warnings li{color:#b54708} code{font-size:12px}
"""
_DIRECTION = {"higher_is_better": "higher is better", "lower_is_better": "lower is better",
              "closer_to_target": "closer to target"}
_DEFAULT_WINDOW = {"head": (40.0, 80.0), "chest": (-600.0, 1500.0)}


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _f(v, nd: int = 2) -> str:
    """Fixed decimals, 'n/a' for missing."""
    if v is None:
        return "n/a"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return _e(v)
    if x != x:
        return "n/a"
    return f"{x:.{nd}f}"


def _g(v) -> str:
    if v is None:
        return "n/a"
    x = float(v)
    if x != x:
        return "n/a"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _png(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def _write(out_html, text: str) -> Path:
    out = Path(out_html)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise QCInputError(f"cannot write report: {exc.strerror}", out) from None
    return out


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then the caller escaped them)."""
    th = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ----------------------------------------------------------------------------------------------
# individual scan
# ----------------------------------------------------------------------------------------------


def _views_figure(scan, body, region: str):
    """Axial, coronal and sagittal views through the body centroid, body outline in green."""
    import numpy as np
    from matplotlib.figure import Figure

    hu = scan.hu
    nz, ny, nx = hu.shape
    dz, dy, dx = scan.spacing
    if body is not None and body.any():
        zz, yy, xx = np.nonzero(body)
        k, j, i = int(np.median(zz)), int(np.median(yy)), int(np.median(xx))
    else:
        k, j, i = nz // 2, ny // 2, nx // 2
    meta = scan.metadata
    c, w = _DEFAULT_WINDOW.get(region, (40.0, 400.0))
    if meta.get("WindowCenter") is not None and meta.get("WindowWidth"):
        c, w = float(meta["WindowCenter"]), float(meta["WindowWidth"])
    vmin, vmax = c - w / 2, c + w / 2
    views = [
        ("axial", hu[k], None if body is None else body[k], [0, nx * dx, ny * dy, 0], "upper", ("R", "L"),
         f"z index {k}"),
        ("coronal", hu[:, j, :], None if body is None else body[:, j, :], [0, nx * dx, 0, nz * dz], "lower",
         ("R", "L"), f"y index {j}"),
        ("sagittal", hu[:, :, i], None if body is None else body[:, :, i], [0, ny * dy, 0, nz * dz], "lower",
         ("A", "P"), f"x index {i}"),
    ]
    fig = Figure(figsize=(13, 4.8))
    for n, (name, img, m, extent, origin, lr, where) in enumerate(views):
        ax = fig.add_subplot(1, 3, n + 1)
        ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, origin=origin, interpolation="bilinear")
        if m is not None and m.any():
            ax.contour(m.astype(float), levels=[0.5], colors=["#39ff14"], linewidths=1.0, extent=extent, origin=origin)
        ax.set_title(f"{name} ({where})", fontsize=10)
        ax.text(0.02, 0.5, lr[0], color="yellow", transform=ax.transAxes, fontsize=11, va="center")
        ax.text(0.96, 0.5, lr[1], color="yellow", transform=ax.transAxes, fontsize=11, va="center")
        ax.set_xlabel("mm", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"window C {c:g} / W {w:g} HU; green: body mask", fontsize=10)
    return fig


def explain_table(result: Assessment) -> str:
    """The explain tree as an HTML table: overall, categories, terms, not-assessed items."""
    coefs = {t.category: t for t in result.overall_terms}
    header = ["", "status", "IQM", "value", "unit", "direction", "score / feature", "coefficient", "contribution"]
    rows, classes = [], []
    rows.append([f"<b>Overall</b> (intercept {result.overall_intercept:g})", "", "", "", "", "",
                 f"<b>{_f(result.overall)}</b>", "", ""])
    classes.append("cat")
    for name, cat in result.categories.items():
        ot = coefs.get(name)
        if cat.score is None:
            rows.append([_e(name), "", "", "", "", "", "not assessed", "", ""])
            classes.append("cat na")
        else:
            rows.append([f"{_e(name)} <span class=muted>(intercept {cat.intercept:g})</span>", "", "", "", "", "",
                         _f(cat.score), _f(ot.coefficient, 3) if ot else "", f"{ot.contribution:+.3f}" if ot else ""])
            classes.append("cat")
        for t in cat.terms:
            iqm = result.iqms.get(t.iqm)
            direction = _DIRECTION.get(iqm.direction, iqm.direction) if iqm else ""
            ci = f" [{t.ci_low:.3f}, {t.ci_high:.3f}]" if t.ci_low is not None and t.ci_high is not None else ""
            rows.append([_e(t.item), f'<span class="{_e(t.status)}">{_e(t.status)}</span>', f"<code>{_e(t.iqm)}</code>",
                         _g(t.value), _e(t.unit), _e(direction),
                         "n/a" if t.feature is None else f"{t.feature:.2f}", f"{t.coefficient:.3f}{_e(ci)}",
                         f"{t.contribution:+.3f}"])
            classes.append("term")
        for na in cat.not_assessed:
            rows.append([_e(na), "", "", "", "", "", "not assessed", "", ""])
            classes.append("term na")
    return _table(header, rows, classes, raw=True)


def scan_report_html(result: Assessment, views_png: str | None = None, note: str = "") -> str:
    """The individual report's HTML (``views_png``: an ``<img>`` tag of the views, or None)."""
    model = result.model or {}
    scored = {t.iqm for c in result.categories.values() for t in c.terms}
    other = [i for n, i in result.iqms.items() if n not in scored]
    worst = result.worst_term()
    scan = result.scan or {}
    facts = ", ".join(f"{k} {_e(v)}" for k, v in scan.items() if k not in ("shape_zyx", "spacing_zyx_mm"))
    parts = [
        f"<h1>CT quality report</h1><div class=muted>{_e(result.source)}</div>",
        '<div class="kpis">'
        f'<div class="kpi">overall<b id="overall">{_f(result.overall)} / 10</b></div>'
        f'<div class="kpi">region<b>{_e(result.region)}</b></div>'
        f'<div class="kpi">model<b>{_e(model.get("kind", "?"))}</b></div>'
        f'<div class="kpi">warnings<b>{len(result.warnings)}</b></div></div>',
        f"<div class=muted>region: {_e(result.region_reason)}</div>",
        f"<div class=muted>grid {_e(scan.get('shape_zyx'))} voxels (z, y, x), spacing {_e(scan.get('spacing_zyx_mm'))} mm; "
        f"{facts}</div>",
        "<h2>Views</h2>", views_png or f"<p class=muted>images not available: {_e(note)}</p>",
        "<h2>Explain: overall &larr; categories &larr; IQMs</h2>",
        "<p class=muted>score = intercept + &sum; coefficient &times; feature; contributions plus intercept give each score "
        "exactly. Feature = rubric item score (0-10) or z-score (fitted model).</p>",
        explain_table(result),
    ]
    if worst is not None:
        cat, t, gain = worst
        parts.append(f"<p><b>Costs the most:</b> {_e(cat)} / {_e(t.item)} (<code>{_e(t.iqm)}</code> = {_g(t.value)} "
                     f"{_e(t.unit)}): fixing it would add {gain:.2f} points to the overall score.</p>")
    if other:
        parts.append("<h2>Measured, not scored</h2>")
        parts.append(_table(["IQM", "value", "unit", "direction", "status"],
                            [[i.name, _g(i.value), i.unit, _DIRECTION.get(i.direction, i.direction), i.status]
                             for i in other]))
    parts.append("<h2>Warnings</h2>")
    parts.append("<ul class=warnings>" + "".join(f"<li>{_e(w)}</li>" for w in result.warnings) + "</ul>"
                 if result.warnings else "<p class=muted>none</p>")
    parts.append(f"<p class=muted>ctqc {_e(result.versions.get('ctqc'))}; model {_e(model.get('config', ''))} "
                 f"{_e(model.get('file', ''))}; timings (s) {_e(result.timings_s)}</p>")
    return _page(f"CT QC {result.source}", "\n".join(parts))


def write_scan_report(path, result: Assessment, out_html, series_uid: str | None = None) -> Path:
    """Write the individual report of ``result`` (the assessment of ``path``) to ``out_html``. The scan is
    reloaded for the views; if that fails the report is still written, with the reason instead of images."""
    from qc.io import load_scan
    from qc.pipeline import compute_masks

    views, note = None, ""
    try:
        scan = load_scan(path, series_uid=series_uid)
        masks = compute_masks(scan)
        views = _png(_views_figure(scan, masks.get("body_mask"), result.region), "axial, coronal and sagittal views")
        if str(result.versions.get("noise2quality", "")).startswith("noise2quality-"):  # assessed with --networks
            from detectors import noise2quality

            n2q_fig = noise2quality.map_figure(scan.hu, scan.spacing)
            if n2q_fig is not None:
                views += _png(n2q_fig, "Noise2Quality predicted SSIM map")
    except QCInputError as exc:
        note = str(exc)
    return _write(out_html, scan_report_html(result, views, note))


def add_html(result: Assessment, path, out_html, series_uid: str | None = None) -> Path:
    """For ``qc assess --html FILE``: write the individual report of an assessment just made."""
    return write_scan_report(path, result, out_html, series_uid=series_uid)


def result_from_json(d: dict) -> Assessment:
    """Rebuild an :class:`Assessment` from :meth:`Assessment.to_json_dict` (as stored in ``scans.result_json``)."""
    cats = {n: {"name": n, **c} for n, c in d.get("categories", {}).items()}
    iqms = {n: {"name": n, **i} for n, i in d.get("iqms", {}).items()}
    fields = {k: v for k, v in d.items() if k in Assessment.model_fields}
    return Assessment.model_validate({**fields, "categories": cats, "iqms": iqms})


def write_scan_report_from_store(store, key: str, out_html, root=None) -> Path:
    """Individual report of one stored scan (``key`` or a unique prefix of it). A stored path relative to the
    audited folder (``qc audit --paths relative``) is looked up under ``root``; a hashed one cannot be: the
    report is then written without the images, saying why."""
    from qc.store import Store

    with Store(store, read_only=True) as st:
        rows = st.con.execute("SELECT key, path, series_uid, result_json FROM scans WHERE key LIKE ? ESCAPE '\\' "
                              "ORDER BY key LIMIT 2",
                              [key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"]).fetchall()
    if not rows:
        raise QCInputError(f"no scan with key {key!r} in the store", store)
    if len(rows) > 1 and rows[0][0] != key:
        raise QCInputError(f"key prefix {key!r} matches several scans; give more of it", store)
    _, path, series_uid, rj = rows[0]
    result = result_from_json(json.loads(rj))
    if path and path.startswith("path-sha256:"):
        return _write(out_html, scan_report_html(result, None, "the store holds hashed paths (audit --paths hashed)"))
    if path and not Path(path).is_absolute():
        if root is None:
            return _write(out_html, scan_report_html(result, None, "the store holds paths relative to the audited "
                                                     "folder: give --root DIR to show the images"))
        path = str(Path(root) / path)
    return write_scan_report(path, result, out_html, series_uid=series_uid)


# ----------------------------------------------------------------------------------------------
# group report
# ----------------------------------------------------------------------------------------------

_MAX_GROUPS = 15


def _top_groups(series, n: int = _MAX_GROUPS):
    """Group labels with the largest counts; the rest becomes '(other)'."""
    counts = series.value_counts()
    keep = set(counts.index[:n])
    return series.where(series.isin(keep), "(other)")


def _box_figure(wide, by: str, score_cols: list[str]):
    from matplotlib.figure import Figure

    groups = _top_groups(wide[by].fillna("(unknown)"))
    labels = list(groups.value_counts().sort_index().index)
    ncol = 3
    nrow = (len(score_cols) + ncol - 1) // ncol
    fig = Figure(figsize=(13, 2.9 * nrow + 0.6))
    for n, col in enumerate(score_cols):
        ax = fig.add_subplot(nrow, ncol, n + 1)
        data = [wide.loc[groups == g, col].dropna().to_numpy() for g in labels]
        ax.boxplot(data, tick_labels=[str(g)[:18] for g in labels], showmeans=True)
        ax.set_title(col, fontsize=10)
        ax.set_ylim(-0.3, 10.3)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"scores (0-10) per {by}; triangles = mean", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return fig


def _control_figure(scans):
    """Overall score in time order per region; centre line = mean, limits = mean +- 3 SD."""
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    t = pd.to_datetime(scans["study_date"]).fillna(pd.to_datetime(scans["assessed_at"]))
    d = scans.assign(t=t).dropna(subset=["overall"]).sort_values(["t", "key"])
    regions = sorted(d["region"].fillna("?").unique())
    fig = Figure(figsize=(13, 3.4 * max(1, len(regions))))
    limits = {}
    for n, reg in enumerate(regions):
        part = d[d["region"].fillna("?") == reg]
        y = part["overall"].to_numpy(float)
        mean, sd = float(np.mean(y)), float(np.std(y, ddof=1)) if len(y) > 1 else 0.0
        lo, hi = mean - 3 * sd, mean + 3 * sd
        limits[reg] = (mean, sd, lo, hi, int(np.sum((y < lo) | (y > hi))), len(y))
        ax = fig.add_subplot(len(regions), 1, n + 1)
        x = part["t"].to_numpy()
        ax.plot(x, y, "-o", color="#1f5fbf", ms=4, lw=0.8)
        out = (y < lo) | (y > hi)
        ax.plot(x[out], y[out], "o", color="#d92d20", ms=7, label="outside limits")
        ax.axhline(mean, color="#067647", lw=1.2, label=f"mean {mean:.2f}")
        for v in (lo, hi):
            ax.axhline(v, color="#d92d20", lw=1, ls="--")
        ax.set_title(f"{reg}: overall score over time (n={len(y)}), limits mean ± 3 SD = [{lo:.2f}, {hi:.2f}]",
                     fontsize=10)
        ax.set_ylabel("overall (0-10)")
        ax.legend(fontsize=8, loc="lower left")
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig, limits


def _failure_figure(rates):
    from matplotlib.figure import Figure

    rates = rates.sort_values()
    fig = Figure(figsize=(10, 0.3 * len(rates) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(list(rates.index), rates.to_numpy(), color=["#d92d20" if v > 0 else "#98a2b3" for v in rates])
    for i, v in enumerate(rates.to_numpy()):
        ax.text(v + 0.5, i, f"{v:.0f} %", va="center", fontsize=8)
    ax.set_xlim(0, 105)
    ax.set_xlabel("% of rated scans with status 'fail'")
    ax.tick_params(labelsize=8)
    ax.set_title("failure rate per IQM", fontsize=10)
    fig.tight_layout()
    return fig


def _scatter_figure(d, xcol: str, xlabel: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot(1, 1, 1)
    for reg, part in d.groupby(d["region"].fillna("?")):
        ax.scatter(part[xcol], part["global_noise_index_hu"], s=22, label=f"{reg} (n={len(part)})", alpha=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("global noise index (HU)")
    ax.set_title(f"noise vs {xlabel}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def group_report_html(store) -> str:
    """The group report's HTML for an audit store."""
    import pandas as pd

    from qc.export import group_table
    from qc.store import Store

    with Store(store, read_only=True) as st:
        scans = st.df("SELECT key, path, region, protocol, scanner, kvp, mas, ctdivol, study_date, overall, "
                      "model_version, assessed_at FROM scans")
        scores = st.df("SELECT key, category, score FROM scores")
        iqms = st.df("SELECT key, iqm, value, status FROM iqms")
        errors = st.df("SELECT kind, path, reason, error_type FROM errors ORDER BY kind, path")
    n_err = int((errors["kind"] != "skipped").sum())
    n_skip = int((errors["kind"] == "skipped").sum())
    overall_mean = float(scans["overall"].mean()) if len(scans) else None
    parts = [f"<h1>CT protocol audit</h1><div class=muted>{_e(Path(str(store)).name)}; model "
             f"{_e(', '.join(sorted(scans['model_version'].dropna().unique())))}</div>",
             '<div class="kpis">'
             f'<div class="kpi">scans<b id="n_scans">{len(scans)}</b></div>'
             f'<div class="kpi">mean overall<b id="overall_mean">{_f(overall_mean)}</b></div>'
             f'<div class="kpi">median overall<b>{_f(scans["overall"].median() if len(scans) else None)}</b></div>'
             f'<div class="kpi">errors<b id="n_errors">{n_err}</b></div>'
             f'<div class="kpi">skipped<b>{n_skip}</b></div>'
             + "".join(f'<div class="kpi">{_e(r)}<b>{n}</b></div>' for r, n in scans["region"].value_counts().items())
             + "</div>"]
    if len(scans):
        wide = scans.copy()
        score_cols = ["overall"]
        if len(scores):
            sc = scores.pivot(index="key", columns="category", values="score")
            cats = [c for c in sorted(sc.columns) if sc[c].notna().any()]
            wide = wide.merge(sc[cats], left_on="key", right_index=True, how="left")
            score_cols += cats
        for by in ("protocol", "scanner"):
            parts.append(f"<h2>Scores per {by}</h2>")
            parts.append(_png(_box_figure(wide, by, score_cols), f"box plots of scores per {by}"))
        parts.append("<h2>Control chart: overall score over time</h2>")
        fig, limits = _control_figure(scans)
        parts.append(_png(fig, "control chart of the overall score"))
        parts.append(_table(["region", "n", "mean", "SD", "lower limit", "upper limit", "points outside"],
                            [[r, n, _f(m), _f(s), _f(lo), _f(hi), k] for r, (m, s, lo, hi, k, n) in limits.items()]))
        rated = iqms[iqms["status"].isin(["pass", "warn", "fail"])]
        if len(rated):
            rates = rated.groupby("iqm")["status"].apply(lambda s: 100.0 * float((s == "fail").mean()))
            parts.append("<h2>Failure rate per IQM</h2>")
            parts.append(_png(_failure_figure(rates), "failure rate per IQM"))
        val = iqms.pivot(index="key", columns="iqm", values="value") if len(iqms) else pd.DataFrame()
        if "global_noise_index_hu" in val.columns:
            d = scans.merge(val, left_on="key", right_index=True, how="left")
            if "water_equivalent_diameter_mm" in d.columns and d["water_equivalent_diameter_mm"].notna().any():
                xcol, xlabel = "water_equivalent_diameter_mm", "water-equivalent diameter (mm)"
            else:
                xcol, xlabel = "ctdivol", "CTDIvol (mGy)"
            d = d.dropna(subset=[xcol, "global_noise_index_hu"])
            if len(d):
                parts.append("<h2>Noise vs patient size / dose</h2>")
                parts.append(_png(_scatter_figure(d, xcol, xlabel), f"noise vs {xlabel}"))
        gt = group_table(store, "protocol")
        parts.append("<h2>Per protocol</h2>")
        parts.append(_table(["protocol", "n", "overall mean", "median", "IQR", "worst scan", "worst overall"],
                            [[r["protocol"], r["n"], _f(r["overall_mean"]), _f(r["overall_median"]),
                              _f(r["overall_iqr"]), r["worst_path"], _f(r["worst_overall"])]
                             for _, r in gt.iterrows()]))
        low = scans.dropna(subset=["overall"]).nsmallest(10, "overall")
        parts.append("<h2>Lowest-scoring scans</h2>")
        parts.append(_table(["overall", "region", "protocol", "path", "key"],
                            [[_f(r["overall"]), r["region"], r["protocol"], r["path"], r["key"]]
                             for _, r in low.iterrows()]))
    else:
        parts.append("<p class=muted>no scans in the store yet</p>")
    parts.append("<h2>Errors and skipped inputs</h2>")
    if len(errors):
        shown = errors.head(500)
        parts.append(_table(["kind", "path", "reason", "error type"],
                            [[r["kind"], r["path"], r["reason"], r["error_type"]] for _, r in shown.iterrows()]))
        if len(errors) > len(shown):
            parts.append(f"<p class=muted>{len(errors) - len(shown)} more not shown (see `qc export`).</p>")
    else:
        parts.append("<p class=muted>none</p>")
    return _page("CT protocol audit", "\n".join(parts))


def write_group_report(store, out_html) -> Path:
    """Write the group report of an audit store to ``out_html``."""
    return _write(out_html, group_report_html(store))
