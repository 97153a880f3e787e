"""Reconstruction-kernel and dose-level classifiers on explicit image features.

Why logistic regressions on a handful of physical features, and not a CNN: image noise in CT follows a
known law, sigma ~ mAs^-1/2 slice^-1/2 pixel^-3/2 exp(mu_w WED / 2) (Brooks & Di Chiro 1976; AAPM TG-220
for WED), and the kernel sets the noise texture (NPS). On the logarithms of noise, size, pixel and slice
the dose classes are linearly separable, so a calibrated logistic regression is as accurate as a network,
trains in seconds on CPU, ships as a few JSON numbers (no pickle), and every coefficient can be read.
(The 3-D VGG of Chest CT-IQA is reproduced separately for comparison, see the published-networks issue.)

Features (all from the image, none from DICOM dose tags, which are often missing or wrong):

* ``log_noise``     ln of the global noise index (Christianson 2015), HU
* ``wed_cm``        mean water-equivalent diameter (AAPM TG-220), cm
* ``log_pixel``     ln of the in-plane pixel size, mm
* ``log_slice``     ln of the slice spacing, mm
* ``log_resid_sd``  ln of the SD of the noise residual (hu - 7x7 local mean) in soft tissue, HU: a noise
                    measure that does not saturate at very low dose (see :func:`noise_texture`)
* ``noise_rho1``    lag-1 autocorrelation of the noise residual in soft tissue (smooth kernels correlate
                    neighbouring pixels: rho1 ~ 0.5-0.9; sharp/lung kernels: ~ 0-0.3)

Models (fitted with scikit-learn, exported to JSON numbers):

* ``kernel``  logistic regression (standardised features): P(sharp / lung-bone reconstruction) from
              (noise_rho1, log_pixel).
* ``dose``    linear regression of ln(effective mAs) on all features: the noise law inverted. Its residual SD
              (on the training scans) makes class probabilities by Gaussian likelihood with equal priors,
              P(level k) ~ N(prediction; ln level_k, sd), for any set of dose levels:
              ``dose2``: 30 vs 50 mAs (the Chest CT-IQA dose task) and ``dose5``: the five Noise2Quality dose
              levels (5, 10, 25, 50, 75 % of 100 mAs). One regression serves both because only the
              effective mAs (mAs x dose fraction) sets the quantum noise. A multinomial logistic fit on the
              same features reached dose5 0.75 vs 0.90 for this regression (40 training scans per task).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

FEATURES = ("log_noise", "wed_cm", "log_pixel", "log_slice", "noise_rho1", "log_resid_sd")
DOSE2_MAS = (30.0, 50.0)
DOSE5_FRACTIONS = (0.05, 0.10, 0.25, 0.50, 0.75)
DOSE5_LEVELS_MAS = tuple(100.0 * f for f in DOSE5_FRACTIONS)
MODEL_FEATURES = {
    "kernel": ("noise_rho1", "log_pixel"),
    "dose": FEATURES + ("rho1_x_log_pixel",),
}


def noise_texture(hu: np.ndarray, body_mask: np.ndarray, max_slices: int = 12) -> tuple[float, float] | None:
    """(rho1, residual SD): lag-1 autocorrelation (along x and y, averaged) and SD (HU) of the noise residual
    hu - local mean (7x7) inside homogeneous soft tissue (9x9 local mean -30..150 HU, eroded), over up to
    ``max_slices`` evenly spaced slices. Unlike the global noise index, whose 0-150 HU tissue mask truncates
    the noise once its SD approaches the mask width (very low dose, sharp kernels), the residual SD keeps
    growing with the noise because the mask is judged on the local mean."""
    from scipy import ndimage as ndi

    zs = np.nonzero(body_mask.reshape(body_mask.shape[0], -1).any(axis=1))[0]
    if zs.size == 0:
        return None
    zs = zs[np.linspace(0, zs.size - 1, min(zs.size, max_slices)).round().astype(int)]
    num = den = 0.0
    count = 0
    for k in zs:
        sl = hu[k].astype(np.float32)
        # soft tissue judged on the 9x9 local mean (raw thresholds would truncate the noise of sharp kernels)
        local = ndi.uniform_filter(sl, size=9)
        tissue = ndi.binary_erosion((local > -30) & (local < 150) & body_mask[k], iterations=4)
        if tissue.sum() < 200:
            continue
        # residual from a 7x7 mean background: removes anatomy, keeps the noise texture
        res = sl - ndi.uniform_filter(sl, size=7)
        res = res - res[tissue].mean()
        both_x = tissue[:, 1:] & tissue[:, :-1]
        both_y = tissue[1:, :] & tissue[:-1, :]
        num += float((res[:, 1:] * res[:, :-1])[both_x].sum() + (res[1:, :] * res[:-1, :])[both_y].sum())
        den += float((res[:, 1:] ** 2)[both_x].sum() + (res[1:, :] ** 2)[both_y].sum())
        count += int(both_x.sum() + both_y.sum())
    if den <= 0:
        return None
    return num / den, float(np.sqrt(den / count))


def extract_features(hu, spacing, body_mask) -> dict[str, float] | None:
    """The classifier features of one scan (None when the scan has too little soft tissue)."""
    from metrics.dose import water_equivalent_diameter_mm
    from metrics.noise import global_noise_index_hu

    gni = global_noise_index_hu(hu, spacing, body_mask)
    wed = water_equivalent_diameter_mm(hu, body_mask, spacing)
    tex = noise_texture(hu, body_mask)
    if not gni or not wed or tex is None or gni <= 0 or tex[1] <= 0:
        return None
    return {"log_noise": float(np.log(gni)), "wed_cm": float(wed) / 10.0, "log_pixel": float(np.log(spacing[1])),
            "log_slice": float(np.log(spacing[0])), "noise_rho1": float(tex[0]), "log_resid_sd": float(np.log(tex[1]))}


def _design(feats: dict[str, float], names: tuple[str, ...]) -> np.ndarray:
    row = dict(feats)
    row["rho1_x_log_pixel"] = feats["noise_rho1"] * feats["log_pixel"]
    return np.array([row[n] for n in names], dtype=float)


@dataclass
class LinearClassifier:
    """A fitted (multinomial) logistic regression on standardised features, as plain numbers."""

    name: str
    features: tuple[str, ...]
    classes: list
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray        # [n_classes or 1, n_features]
    intercept: np.ndarray   # [n_classes or 1]

    def predict_proba(self, feats: dict[str, float]) -> np.ndarray:
        x = (_design(feats, self.features) - self.mean) / self.scale
        z = self.coef @ x + self.intercept
        if z.size == 1:  # binary: P(classes[1])
            p1 = 1.0 / (1.0 + np.exp(-z[0]))
            return np.array([1.0 - p1, p1])
        z = z - z.max()
        e = np.exp(z)
        return e / e.sum()

    def to_json(self) -> dict:
        return {"name": self.name, "features": list(self.features), "classes": self.classes,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "LinearClassifier":
        return cls(name=d["name"], features=tuple(d["features"]), classes=list(d["classes"]),
                   mean=np.asarray(d["mean"], float), scale=np.asarray(d["scale"], float),
                   coef=np.atleast_2d(np.asarray(d["coef"], float)), intercept=np.atleast_1d(np.asarray(d["intercept"], float)))


@dataclass
class DoseModel:
    """ln(effective mAs) = intercept + coef . features; class probabilities from the residual SD."""

    features: tuple[str, ...]
    coef: np.ndarray
    intercept: float
    resid_sd: float

    def log_mas(self, feats: dict[str, float]) -> float:
        return float(self.coef @ _design(feats, self.features) + self.intercept)

    def effective_mas(self, feats: dict[str, float]) -> float:
        return float(np.exp(self.log_mas(feats)))

    def level_proba(self, feats: dict[str, float], levels_mas) -> np.ndarray:
        """P(each level) with equal priors: Gaussian likelihood of the predicted ln mAs around ln level."""
        z = (self.log_mas(feats) - np.log(np.asarray(levels_mas, float))) / self.resid_sd
        ll = -0.5 * z**2
        e = np.exp(ll - ll.max())
        return e / e.sum()

    def to_json(self) -> dict:
        return {"name": "dose", "features": list(self.features), "coef": self.coef.tolist(),
                "intercept": self.intercept, "resid_sd": self.resid_sd}

    @classmethod
    def from_json(cls, d: dict) -> "DoseModel":
        return cls(features=tuple(d["features"]), coef=np.asarray(d["coef"], float), intercept=float(d["intercept"]),
                   resid_sd=float(d["resid_sd"]))


def fit_dose_model(rows: list[dict]) -> DoseModel:
    """Ordinary least squares of ln(mAs x dose fraction) on the dose features (scikit-learn)."""
    from sklearn.linear_model import LinearRegression

    names = MODEL_FEATURES["dose"]
    X = np.array([_design(r, names) for r in rows])
    y = np.log([r["mas"] * r["dose_pct"] / 100.0 for r in rows])
    reg = LinearRegression().fit(X, y)
    resid = y - reg.predict(X)
    dof = max(1, len(y) - X.shape[1] - 1)
    return DoseModel(features=names, coef=reg.coef_, intercept=float(reg.intercept_),
                     resid_sd=float(np.sqrt((resid**2).sum() / dof)))


def fit_classifier(name: str, rows: list[dict], labels: list, C: float = 10.0) -> LinearClassifier:
    """Fit one model (scikit-learn LogisticRegression, lbfgs) and export it as numbers."""
    from sklearn.linear_model import LogisticRegression

    names = MODEL_FEATURES[name]
    X = np.array([_design(r, names) for r in rows])
    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=C, max_iter=5000).fit((X - mean) / scale, labels)
    return LinearClassifier(name=name, features=names, classes=[c.item() if hasattr(c, "item") else c for c in clf.classes_],
                            mean=mean, scale=scale, coef=np.atleast_2d(clf.coef_), intercept=np.atleast_1d(clf.intercept_))


# ---------------------------------------------------------------- training data from the simulator
def simulate_case(seed: int, *, mas: float, kernel: str, matrix: int, slice_mm: float, dose_fraction: float = 1.0):
    """One thin chest slab (3-4 slices around the carina) and its features; None if unmeasurable."""
    from detectors import classical
    from phantoms import simulate

    ph = simulate("chest", seed=seed, mas=mas, dose_fraction=dose_fraction, kernel=kernel, matrix=matrix,
                  slice_mm=slice_mm, z_start=-1.5 * slice_mm, z_end=1.5 * slice_mm)
    s = ph.scan
    masks = classical.segment(s.hu, s.spacing, s.fov)
    return extract_features(s.hu, s.spacing, masks["body_mask"]), ph.truth


def make_dataset(n: int, seed0: int, task: str, matrices=(256, 384, 512), slices=(1.25, 2.5, 5.0),
                 progress: bool = False) -> list[dict]:
    """``n`` simulated chest slabs for ``task`` ('dose2': 30 or 50 mAs; 'dose5': the five Noise2Quality
    fractions of 100 mAs), with patient size (seed), kernel, matrix and slice thickness drawn at random.
    Returns records: the features plus the truth (``kernel``, ``mas``, ``dose_fraction``, ``matrix``,
    ``slice_mm``, ``wed_mm``); scans whose features cannot be measured are dropped."""
    rng = np.random.default_rng(seed0)
    records = []
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"simulating {task}")
    for i in it:
        kernel = str(rng.choice(["smooth", "sharp"]))
        matrix = int(rng.choice(matrices))
        slice_mm = float(rng.choice(slices))
        if task == "dose2":
            mas, frac = float(rng.choice(DOSE2_MAS)), 1.0
        elif task == "dose5":
            mas, frac = 100.0, float(rng.choice(DOSE5_FRACTIONS))
        else:
            raise ValueError(f"unknown task {task!r}")
        feats, truth = simulate_case(seed0 * 100003 + i, mas=mas, dose_fraction=frac, kernel=kernel, matrix=matrix,
                                     slice_mm=slice_mm)
        if feats is not None:
            records.append({**feats, "kernel": kernel, "mas": int(mas), "dose_pct": int(round(frac * 100)), "matrix": matrix,
                            "slice_mm": slice_mm, "wed_mm": float(truth.get("wed_mm", np.nan))})
    return records


LABEL_OF = {"kernel": "kernel", "dose2": "mas", "dose5": "dose_pct"}


def train_all(train: dict[str, list[dict]], C: float = 10.0) -> dict:
    """Fit the kernel classifier and the dose model on both record lists {'dose2': [...], 'dose5': [...]}."""
    both = train["dose2"] + train["dose5"]
    return {"kernel": fit_classifier("kernel", both, [r["kernel"] for r in both], C=C), "dose": fit_dose_model(both)}


TASK_LEVELS = {"dose2": DOSE2_MAS, "dose5": DOSE5_LEVELS_MAS}


def task_proba(models: dict, task: str, feats: dict[str, float]) -> tuple[list, np.ndarray]:
    """(classes, probabilities) of one task: 'kernel' ('smooth'/'sharp'), 'dose2' (mAs) or 'dose5' (% dose)."""
    if task == "kernel":
        m = models["kernel"]
        return m.classes, m.predict_proba(feats)
    levels = TASK_LEVELS[task]
    classes = [int(v) for v in levels] if task == "dose2" else [int(round(f * 100)) for f in DOSE5_FRACTIONS]
    return classes, models["dose"].level_proba(feats, levels)


def _task_rows(records: dict[str, list[dict]], task: str) -> tuple[list[dict], list]:
    rows = records["dose2"] + records["dose5"] if task == "kernel" else records[task]
    return rows, [r[LABEL_OF[task]] for r in rows]


def accuracy(models: dict, task: str, rows: list[dict], labels: list) -> float:
    pred = []
    for r in rows:
        classes, p = task_proba(models, task, r)
        pred.append(classes[int(np.argmax(p))])
    return float(np.mean([p == y for p, y in zip(pred, labels)]))


def log_loss(models: dict, task: str, rows: list[dict], labels: list) -> float:
    """Mean negative log-likelihood of the true class (calibration as well as accuracy)."""
    p = []
    for r, y in zip(rows, labels):
        classes, pr = task_proba(models, task, r)
        p.append(pr[classes.index(y)])
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1.0))))


def evaluate(models: dict, test: dict[str, list[dict]]) -> dict[str, dict]:
    """Held-out accuracy and log-loss per task."""
    out = {}
    for task in ("kernel", "dose2", "dose5"):
        rows, y = _task_rows(test, task)
        out[task] = {"test_accuracy": accuracy(models, task, rows, y), "test_log_loss": log_loss(models, task, rows, y),
                     "n_test": len(rows)}
    return out


def save_models(models: dict, path, meta: dict) -> None:
    out = {"kind": "ctqc-linear-classifiers", "version": 1, "features": list(FEATURES),
           "models": {k: m.to_json() for k, m in models.items()}, **meta}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


def load_models(data: dict) -> dict:
    if not isinstance(data, dict) or data.get("kind") != "ctqc-linear-classifiers":
        from detectors.weights import WeightsError

        raise WeightsError("not a ctqc classifier file")
    return {"kernel": LinearClassifier.from_json(data["models"]["kernel"]),
            "dose": DoseModel.from_json(data["models"]["dose"])}


def shipped_models() -> dict | None:
    """The shipped classifiers (verified against the weights manifest), or None if not trained yet."""
    from detectors.weights import WeightsError, load_json_model

    try:
        return load_models(load_json_model("classifiers"))
    except WeightsError:
        return None



def train_and_save(n: int = 240, seed: int = 0, out_dir=None, C: float = 10.0, progress: bool = True,
                   matrices=(256, 384, 512)) -> dict:
    """Simulate ``n`` chest slabs per dose task (train seeds and disjoint test seeds, n/2 each), fit the three
    models, measure them on the held-out half, write ``classifiers.json`` into ``out_dir`` (default: the
    shipped ``detectors/weights``) and register it in that folder's manifest with the measured numbers.

    Returns {task: {test_accuracy, test_log_loss, n_test, n_train}}."""
    import time
    from pathlib import Path

    from detectors import weights

    t0 = time.perf_counter()
    half = max(4, n // 2)
    train = {t: make_dataset(half, seed * 2 + 1, t, matrices=matrices, progress=progress) for t in ("dose2", "dose5")}
    test = {t: make_dataset(half, seed * 2 + 2, t, matrices=matrices, progress=progress) for t in ("dose2", "dose5")}
    models = train_all(train, C=C)
    report = evaluate(models, test)
    for task in report:
        report[task]["n_train"] = len(_task_rows(train, task)[0])
    out = Path(out_dir) if out_dir is not None else weights.WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / "classifiers.json"
    data = {"description": "logistic regressions on image features; see detectors/classifiers.py"}
    save_models(models, path, data)
    weights.register("classifiers", path, {
        "kind": "logistic regressions (JSON numbers)", "version": "classifiers-1",
        "training_data": (f"phantoms.simulate chest slabs (3 slices at the carina), {half} per dose task for training "
                          f"(seeds from {seed * 2 + 1}), {half} held out (seeds from {seed * 2 + 2}); random patient size, "
                          f"kernel smooth/sharp, matrix {'/'.join(map(str, matrices))}, slice 1.25/2.5/5 mm; "
                          "dose2: 30 or 50 mAs; "
                          "dose5: 5/10/25/50/75 % of 100 mAs"),
        "command": f"qc train classifiers --n {n} --seed {seed}",
        "metrics": report, "train_seconds": round(time.perf_counter() - t0, 1)}, manifest=out / "manifest.json")
    return report


def features_from(hu, spacing, body_mask, gni_hu: float | None, wed_mm: float | None) -> dict[str, float] | None:
    """Classifier features of a scan whose global noise index and WED were already measured (the pipeline's
    first IQM pass): only the noise texture is computed here."""
    if not gni_hu or not wed_mm or gni_hu <= 0:
        return None
    tex = noise_texture(hu, body_mask)
    if tex is None or tex[1] <= 0:
        return None
    return {"log_noise": float(np.log(gni_hu)), "wed_cm": float(wed_mm) / 10.0, "log_pixel": float(np.log(spacing[1])),
            "log_slice": float(np.log(spacing[0])), "noise_rho1": float(tex[0]), "log_resid_sd": float(np.log(tex[1]))}


def predict(models: dict, feats: dict[str, float] | None) -> dict[str, float | None]:
    """The classifier outputs that become IQMs (all None when the features could not be measured)."""
    keys = ("kernel_prob_sharp", "dose_prob_low_30mas", "estimated_effective_mas", "dose5_expected_pct")
    if feats is None or models is None:
        return dict.fromkeys(keys)
    k_classes, k_p = task_proba(models, "kernel", feats)
    d_classes, d_p = task_proba(models, "dose2", feats)
    f_classes, f_p = task_proba(models, "dose5", feats)
    return {"kernel_prob_sharp": float(k_p[k_classes.index("sharp")]),
            "dose_prob_low_30mas": float(d_p[d_classes.index(30)]),
            "estimated_effective_mas": models["dose"].effective_mas(feats),
            "dose5_expected_pct": float(np.dot(f_p, f_classes))}
