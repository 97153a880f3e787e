"""IQM registry: every image-quality metric is a pure function registered with its documentation.

A registered function takes keyword arguments named after the inputs it needs (``hu``, ``spacing``,
``body_mask``, ``metadata``, ...: see :data:`KNOWN_INPUTS`) and returns a float (or ``None`` when the
quantity cannot be measured on this scan, e.g. a DICOM tag absent from a NIfTI file). The registry
resolves the inputs by parameter name, so the functions stay free of I/O and orchestration.

Like pyradiomics, the test-suite enumerates the registry and fails when an IQM lacks its formula, unit,
direction or reference.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Literal

Direction = Literal["higher_is_better", "lower_is_better", "closer_to_target"]

#: Inputs a metric function may ask for, by parameter name.
KNOWN_INPUTS = {
    "hu": "float32 HU volume [z, y, x] (LPS, see qc.io)",
    "spacing": "(dz, dy, dx) voxel spacing in mm",
    "fov": "bool [z, y, x]: voxels with measured data",
    "body_mask": "bool [z, y, x]: patient body (classical or network segmentation)",
    "lung_mask": "bool [z, y, x]: lungs (chest)",
    "intracranial_mask": "bool [z, y, x]: space enclosed by the skull (head)",
    "z_positions": "physical z (mm, superior positive) of each slice centre",
    "isocenter_xy": "(x, y) index coordinates (columns, rows) of the scanner isocentre",
    "metadata": "dict of DICOM keywords (qc.io)",
    "region": "'head' or 'chest'",
    "classifier_outputs": "dict of the shipped classifiers' outputs (detectors.classifiers.predict); second IQM pass",
}


@dataclass(frozen=True)
class IQMSpec:
    name: str
    func: Callable
    unit: str
    direction: Direction
    formula: str
    reference: str
    description: str
    regions: tuple[str, ...] = ("head", "chest")
    inputs: tuple[str, ...] = field(default=())

    def compute(self, available: dict):
        missing = [i for i in self.inputs if available.get(i) is None]
        if missing:
            return None
        return self.func(**{i: available[i] for i in self.inputs})


REGISTRY: dict[str, IQMSpec] = {}


def register_iqm(*, unit: str, direction: Direction, formula: str, reference: str,
                 regions: tuple[str, ...] = ("head", "chest"), name: str | None = None):
    """Decorator: register a pure metric function under ``name`` (default: the function name)."""

    def deco(func):
        key = name or func.__name__
        if key in REGISTRY:
            raise ValueError(f"IQM {key!r} registered twice")
        params = tuple(inspect.signature(func).parameters)
        unknown = [p for p in params if p not in KNOWN_INPUTS]
        if unknown:
            raise ValueError(f"IQM {key!r} asks for unknown inputs {unknown}")
        doc = inspect.getdoc(func) or ""
        REGISTRY[key] = IQMSpec(
            name=key, func=func, unit=unit, direction=direction, formula=formula, reference=reference,
            description=doc.split("\n\n")[0].replace("\n", " "), regions=tuple(regions), inputs=params,
        )
        return func

    return deco


def get_registry() -> dict[str, IQMSpec]:
    """All registered IQMs (imports the metric modules so that they register)."""
    from metrics import artifacts, coverage, dose, noise, perceptual, positioning, protocol, sharpness  # noqa: F401
    from metrics import learned, radiation  # noqa: F401

    return REGISTRY
