"""Body-region decision (head / chest / other) from classical masks: a first heuristic that a trained
classifier will replace. Features, per slice that contains the body:

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
