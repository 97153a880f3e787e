"""Label table of the phantoms: label id -> (name, HU at 120 kVp).

HU values are typical unenhanced values at 120 kVp from Kalender, *Computed Tomography* (3rd ed., 2011,
Table 1.1), Bushberg et al., *The Essential Physics of Medical Imaging* (3rd ed., Table 10-2) and
Hounsfield-unit tables in Radiopaedia ("Hounsfield unit"): air -1000, lung -850, fat -100, water 0,
CSF 8, white matter 28, grey matter 40, blood 40, muscle 50, liver 60, lens ~100, cancellous bone ~300,
cortical bone ~1000+.
"""

from __future__ import annotations

LABELS: dict[int, tuple[str, float]] = {
    0: ("air", -1000.0),
    1: ("skin_soft_tissue", 40.0),
    2: ("fat", -100.0),
    3: ("muscle", 50.0),
    4: ("cortical_bone", 1000.0),
    5: ("cancellous_bone", 300.0),
    6: ("grey_matter", 40.0),
    7: ("white_matter", 28.0),
    8: ("csf", 8.0),
    9: ("eye_globe", 10.0),
    10: ("lens", 100.0),
    11: ("lung", -850.0),
    12: ("heart_blood", 40.0),
    13: ("aorta", 40.0),
    14: ("airway", -1000.0),
    15: ("liver", 60.0),
    16: ("sinus_air", -1000.0),
    17: ("metal", 3000.0),
    18: ("cerebellum", 38.0),
    19: ("vessel", 40.0),
    20: ("bowel_gas", -1000.0),
}

NAME_TO_LABEL = {name: k for k, (name, _hu) in LABELS.items()}


def hu_lookup():
    import numpy as np

    lut = np.zeros(max(LABELS) + 1, dtype=np.float32)
    for k, (_n, hu) in LABELS.items():
        lut[k] = hu
    return lut
