"""Body-region decision (head / chest / other) from the anatomy masks.

Two deciders share the mask-derived features below:

* :func:`classify_region`, the documented heuristic (the fallback when no trained model is shipped);
* :class:`RegionModel`, a multinomial logistic regression (scikit-learn, L2, standardised features) on
  :func:`region_features`, trained on simulated heads, chests and upper abdomens with random coverage
  (``qc train region``) and shipped as JSON (``detectors/weights/region.json``, sha256 in the manifest). It gives
  calibrated probabilities P(head), P(chest), P(other) (calibration is measured: held-out log-loss and Brier score
  in the manifest). Logistic regression rather than a network: the classes are separated by a handful of
  anatomical fractions, and a linear model keeps every coefficient inspectable, like the rest of the tool.

Heuristic features, per slice that contains the body:

* skull fraction: share of slices whose cranial cavity (closed bone ring, ``intracranial_mask``) covers
  >= 30 % of the body cross-section;
* lung fraction: share of slices whose lung area (``lung_mask``) covers >= 10 % of the body cross-section.

head if skull >= 0.3 and skull > lung; chest if lung >= 0.2 (a chest scan with generous margins and
upper abdomen still has lungs in >= 20 % of slices; the shared abdomen CT has 7 %); otherwise other (e.g. abdomen, pelvis,
extremity), which this engine does not assess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RegionDecision:
    region: str            # "head" | "chest" | "other"
    skull_fraction: float
    lung_fraction: float
    reason: str
    probs: dict | None = None  # P(head), P(chest), P(other) from the trained model (None: heuristic)


def classify_region(body_mask: np.ndarray, lung_mask: np.ndarray, intracranial_mask: np.ndarray) -> RegionDecision:
    body_area = body_mask.reshape(body_mask.shape[0], -1).sum(axis=1).astype(float)
    present = body_area > 0.05 * body_area.max() if body_area.max() > 0 else body_area > 0
    if not present.any():
        return RegionDecision("other", 0.0, 0.0, "no patient body found in the image")
    lung = lung_mask.reshape(lung_mask.shape[0], -1).sum(axis=1)[present] / body_area[present]
    skull = intracranial_mask.reshape(intracranial_mask.shape[0], -1).sum(axis=1)[present] / body_area[present]
    skull_frac = float(np.mean(skull >= 0.30))
    lung_frac = float(np.mean(lung >= 0.10))
    feats = f"skull-ring slices {skull_frac:.0%}, lung slices {lung_frac:.0%}"
    if skull_frac >= 0.3 and skull_frac > lung_frac:
        return RegionDecision("head", skull_frac, lung_frac, f"head: {feats}")
    if lung_frac >= 0.2:
        return RegionDecision("chest", skull_frac, lung_frac, f"chest: {feats}")
    return RegionDecision("other", skull_frac, lung_frac, f"neither head nor chest ({feats})")


# --------------------------------------------------------------------------------- trained classifier
REGION_CLASSES = ("head", "chest", "other")
# bone_frac and fat_frac are computed and reported but not used by the model: the phantom's trunk has far less
# bone (1-2 % of body voxels) and its head far less fat than real scans, so a model trained on them would learn the
# simulator, not anatomy. The fractions of cranial cavity / lung and the body cross-section carry over to real CT.
REGION_FEATURES = ("skull_frac", "lung_frac", "lung_area_mean", "icr_area_max", "ln_body_area_cm2")
REGION_MODEL = "region"


def region_features(hu: np.ndarray, spacing, body_mask: np.ndarray, lung_mask: np.ndarray,
                    intracranial_mask: np.ndarray) -> dict[str, float] | None:
    """Mask-derived features of the body region (None when no body is found). Over the slices whose body area is
    >= 5 % of the largest: ``skull_frac`` / ``lung_frac`` as :func:`classify_region`; ``lung_area_mean`` mean
    lung/body area ratio; ``icr_area_max`` largest cranial-cavity/body area ratio; ``ln_body_area_cm2`` ln of the
    median body cross-section (cm^2: head ~150-250, trunk ~400-1000); ``bone_frac`` / ``fat_frac`` share of body
    voxels > 300 HU / in [-150, -30] HU (on at most 24 evenly spaced slices, to stay cheap on 512^2 x 300)."""
    nz = body_mask.shape[0]
    body_area = body_mask.reshape(nz, -1).sum(axis=1).astype(float)
    if body_area.max() <= 0:
        return None
    present = np.nonzero(body_area > 0.05 * body_area.max())[0]
    ba = body_area[present]
    lung = lung_mask.reshape(nz, -1).sum(axis=1)[present] / ba
    icr = intracranial_mask.reshape(nz, -1).sum(axis=1)[present] / ba
    sample = present if present.size <= 24 else present[np.linspace(0, present.size - 1, 24).round().astype(int)]
    bone = fat = n = 0
    for k in sample:
        v = np.asarray(hu[k])[body_mask[k]]
        n += v.size
        bone += int(np.count_nonzero(v > 300))
        fat += int(np.count_nonzero((v >= -150) & (v <= -30)))
    px_cm2 = float(spacing[1]) * float(spacing[2]) / 100.0
    return {"skull_frac": float(np.mean(icr >= 0.30)), "lung_frac": float(np.mean(lung >= 0.10)),
            "lung_area_mean": float(lung.mean()), "icr_area_max": float(icr.max()),
            "ln_body_area_cm2": float(np.log(max(np.median(ba) * px_cm2, 1e-3))),
            "bone_frac": bone / max(n, 1), "fat_frac": fat / max(n, 1)}


class RegionModel:
    """Multinomial logistic regression on standardised :data:`REGION_FEATURES` (coefficients in JSON)."""

    def __init__(self, mean, scale, coef, intercept, classes=REGION_CLASSES, features=REGION_FEATURES):
        self.mean, self.scale = np.asarray(mean, float), np.asarray(scale, float)
        self.coef, self.intercept = np.asarray(coef, float), np.asarray(intercept, float)
        self.classes, self.features = tuple(classes), tuple(features)

    def proba(self, feats: dict[str, float]) -> dict[str, float]:
        x = (np.array([feats[f] for f in self.features]) - self.mean) / self.scale
        z = self.coef @ x + self.intercept
        p = np.exp(z - z.max())
        p /= p.sum()
        return {c: float(v) for c, v in zip(self.classes, p)}

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "features": list(self.features), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "RegionModel":
        return cls(d["mean"], d["scale"], d["coef"], d["intercept"], d["classes"], d["features"])


def fit_region_model(rows: list[dict], labels: list[str], C: float = 1.0) -> RegionModel:
    from sklearn.linear_model import LogisticRegression

    X = np.array([[r[f] for f in REGION_FEATURES] for r in rows])
    mean, scale = X.mean(0), np.maximum(X.std(0), 1e-6)
    y = np.array([REGION_CLASSES.index(l) for l in labels])
    lr = LogisticRegression(C=C, max_iter=5000).fit((X - mean) / scale, y)
    return RegionModel(mean, scale, lr.coef_, lr.intercept_)


def shipped_region_model() -> RegionModel | None:
    """The shipped model (sha256-verified), or None if not trained / not verifiable (the heuristic is used)."""
    from detectors import weights

    try:
        return RegionModel.from_json(weights.load_json_model(REGION_MODEL)["model"])
    except weights.WeightsError:
        return None


def decide(hu, spacing, body_mask, lung_mask, intracranial_mask, model: RegionModel | None = None) -> RegionDecision:
    """Region decision: the trained model's most probable class (probabilities in ``probs`` and the reason), or
    the heuristic when no model is available."""
    heur = classify_region(body_mask, lung_mask, intracranial_mask)
    model = model if model is not None else shipped_region_model()
    if model is None:
        return heur
    feats = region_features(hu, spacing, body_mask, lung_mask, intracranial_mask)
    if feats is None:
        return heur
    probs = model.proba(feats)
    best = max(probs, key=probs.get)
    ptxt = ", ".join(f"P({c}) {p:.2f}" for c, p in probs.items())
    feats_txt = f"skull-ring slices {heur.skull_fraction:.0%}, lung slices {heur.lung_fraction:.0%}"
    # a linear model extrapolates: far outside its training data (two soft-tissue blocks, a 4-slice neck stub) it
    # can still favour a class. A head needs at least one slice with a closed skull ring and a chest at least one
    # with lungs; without that evidence the scan is not assessed as that region whatever the probabilities say.
    missing = {"head": feats["skull_frac"] <= 0.0, "chest": feats["lung_frac"] <= 0.0}
    if missing.get(best, False):
        reason = (f"neither head nor chest: the model favours {best} ({ptxt}) but no slice shows "
                  f"{'a closed skull ring' if best == 'head' else 'lungs'} ({feats_txt})")
        return RegionDecision("other", heur.skull_fraction, heur.lung_fraction, reason, probs)
    reason = (f"{best}: {ptxt} ({feats_txt})" if best != "other"
              else f"neither head nor chest ({ptxt}; {feats_txt})")
    return RegionDecision(best, heur.skull_fraction, heur.lung_fraction, reason, probs)


# ------------------------------------------------------------------------------------- training data
def simulated_case(i: int, seed0: int, matrix: int = 128) -> tuple[dict | None, str, dict]:
    """Case ``i``: cycles head / chest / other. Heads: random pitch (+-15 deg) and coverage (full, or cut 0-60 mm
    at either end). Chests: random coverage from only-the-apices to apices-plus-upper-abdomen. Other: upper abdomen
    only (the chest phantom below the costophrenic angles: liver, spine, fat). 5 mm slices."""
    from detectors import classical
    from phantoms import simulate
    from phantoms.simulate import probe_truth

    rng = np.random.default_rng([seed0, i])
    seed = seed0 + i
    kind = REGION_CLASSES[i % 3]
    if kind == "head":
        t0 = probe_truth("head", seed)
        vz, sb = t0["vertex_z_mm"], t0["skull_base_z_mm"]
        z0 = sb - 25.0 + (rng.uniform(0, 60) if rng.random() < 0.3 else 0.0)
        z1 = vz + 8.0 - (rng.uniform(0, 60) if rng.random() < 0.3 else 0.0)
        kw = dict(pitch=float(rng.uniform(-15, 15)), z_start=z0, z_end=max(z1, z0 + 40.0))
    else:
        t0 = probe_truth("chest", seed)
        apex, base = t0["lung_apex_z_mm"], t0["lung_base_z_mm"]
        if kind == "chest":
            r = rng.random()
            if r < 0.6:
                z0, z1 = base - rng.uniform(0, 80), apex + rng.uniform(0, 30)   # full chest, maybe upper abdomen
            elif r < 0.8:
                z0, z1 = base + rng.uniform(60, 150), apex + rng.uniform(0, 30)  # upper chest only
            else:
                z0, z1 = base - rng.uniform(0, 60), base + rng.uniform(80, 160)  # lower chest + upper abdomen
        else:
            z1 = base - rng.uniform(10, 40)
            z0 = z1 - rng.uniform(100, 220)
        kw = dict(yaw=float(rng.uniform(-10, 10)), z_start=z0, z_end=z1)
    ph = simulate(kind if kind != "other" else "chest", seed=seed, matrix=matrix, slice_mm=5.0, **kw)
    m = classical.segment(ph.scan.hu, ph.scan.spacing, ph.scan.fov)
    feats = region_features(ph.scan.hu, ph.scan.spacing, m["body_mask"], m["lung_mask"], m["intracranial_mask"])
    heur = classify_region(m["body_mask"], m["lung_mask"], m["intracranial_mask"]).region
    return feats, kind, {"seed": seed, "heuristic": heur, **{k: round(float(v), 1) for k, v in kw.items()}}


def _log_loss_brier(model: RegionModel, rows, labels) -> tuple[float, float]:
    P = np.array([[model.proba(r)[c] for c in REGION_CLASSES] for r in rows])
    Y = np.array([[float(l == c) for c in REGION_CLASSES] for l in labels])
    return float(-np.mean(np.log(np.clip((P * Y).sum(1), 1e-12, 1)))), float(np.mean(((P - Y) ** 2).sum(1)))


def train_and_save(n: int = 180, n_test: int = 90, seed: int = 0, out_dir=None, log=print) -> dict:
    """Simulate ``n`` training and ``n_test`` held-out cases, fit, measure (accuracy, log-loss, Brier score, and the
    heuristic's accuracy on the same held-out cases), write region.json and register it in the manifest."""
    import json
    import time
    from pathlib import Path

    from detectors import weights

    t0 = time.perf_counter()

    def cases(count, s0):
        rows, labels, heur = [], [], []
        for i in range(count):
            f, kind, info = simulated_case(i, s0)
            if f is None:
                continue
            rows.append(f)
            labels.append(kind)
            heur.append(info["heuristic"])
        return rows, labels, heur

    tr_rows, tr_lab, _ = cases(n, 30_000 + 1000 * seed)
    te_rows, te_lab, te_heur = cases(n_test, 40_000)
    model = fit_region_model(tr_rows, tr_lab)
    pred = [max(p := model.proba(r), key=p.get) for r in te_rows]
    acc = float(np.mean([a == b for a, b in zip(pred, te_lab)]))
    heur_acc = float(np.mean([a == b for a, b in zip(te_heur, te_lab)]))
    ll, brier = _log_loss_brier(model, te_rows, te_lab)
    metrics = {"heldout": {"n": len(te_lab), "accuracy": acc, "log_loss": ll, "brier": brier,
                           "heuristic_accuracy": heur_acc,
                           "per_class_n": {c: te_lab.count(c) for c in REGION_CLASSES}}}
    if log:
        log(f"region: held-out accuracy {acc:.3f} (heuristic {heur_acc:.3f}), log-loss {ll:.3f}, Brier {brier:.3f}, "
            f"n={len(te_lab)}; {time.perf_counter() - t0:.0f}s")
    out = Path(out_dir) if out_dir is not None else weights.WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / "region.json"
    path.write_text(json.dumps({"model": model.to_json()}, indent=1) + "\n")
    return weights.register(REGION_MODEL, path, {
        "kind": "multinomial logistic regression (JSON)", "version": "region-1",
        "training_data": (f"{len(tr_lab)} simulated scans (phantoms.simulate, 128 matrix, 5 mm): heads with random "
                          "pitch/coverage, chests with random coverage, upper abdomens; seeds "
                          f"{30_000 + 1000 * seed}+i"),
        "heldout_data": f"{len(te_lab)} simulated scans, seeds 40000+i (disjoint), same design",
        "command": f"qc train region --n {n} --n-test {n_test} --seed {seed}", "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 1),
        "reference": "features: detectors/region.py region_features; classes head/chest/other",
    }, manifest=out / "manifest.json")
