"""Declarative hierarchy configs (``configs/head_ct.yaml``, ``configs/chest_ct.yaml``), validated on load.

Structure: categories -> items -> IQM. Each item scores one registered IQM on 0-10 (10 inside
``acceptable``, 0 at or beyond ``zero_at``, linear in between; ``null`` = unbounded on that side),
and carries a rubric weight. A category score is intercept + sum(coefficient x item score), an overall
score is intercept + sum(coefficient x category score). Configs are read with ``yaml.safe_load`` (no
Python object tags) and every error names the file and the offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qc.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIGS = {"head": "head_ct.yaml", "chest": "chest_ct.yaml"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Item(_Strict):
    description: str
    iqm: str
    acceptable: tuple[float | None, float | None] = Field(description="[low, high] range scoring 10; null = open")
    zero_at: tuple[float | None, float | None] = Field(description="[low, high] where the score reaches 0; null = open")
    weight: float = Field(1.0, ge=0)
    reference: str = ""

    @model_validator(mode="after")
    def _ranges(self):
        a_lo, a_hi = self.acceptable
        z_lo, z_hi = self.zero_at
        if a_lo is not None and a_hi is not None and a_lo > a_hi:
            raise ValueError(f"acceptable {list(self.acceptable)}: low > high")
        if (a_lo is None) != (z_lo is None) or (a_hi is None) != (z_hi is None):
            raise ValueError("acceptable and zero_at must be open (null) on the same sides")
        if a_lo is not None and z_lo >= a_lo:
            raise ValueError(f"zero_at low {z_lo} must be below acceptable low {a_lo}")
        if a_hi is not None and z_hi <= a_hi:
            raise ValueError(f"zero_at high {z_hi} must be above acceptable high {a_hi}")
        return self


class Category(_Strict):
    description: str
    intercept: float = 0.0
    items: dict[str, Item] = {}
    planned: str | None = Field(None, description="what will measure this category once it lands (no items yet)")


class Overall(_Strict):
    intercept: float = 0.0
    weights: dict[str, float]


class Source(_Strict):
    kind: Literal["rubric", "fitted"]
    description: str
    references: list[str] = []
    model_file: str | None = None


class HierarchyConfig(_Strict):
    region: Literal["head", "chest"]
    version: int = 1
    description: str = ""
    source: Source
    overall: Overall
    categories: dict[str, Category]

    @model_validator(mode="after")
    def _consistent(self):
        missing = set(self.categories) - set(self.overall.weights)
        extra = set(self.overall.weights) - set(self.categories)
        if missing or extra:
            raise ValueError(f"overall.weights must name each category once (missing {sorted(missing)}, unknown {sorted(extra)})")
        if any(w < 0 for w in self.overall.weights.values()):
            raise ValueError("overall.weights must be >= 0")
        return self


def _check_iqms(cfg: HierarchyConfig, path) -> None:
    from metrics.registry import get_registry

    reg = get_registry()
    for cname, cat in cfg.categories.items():
        for iname, item in cat.items.items():
            spec = reg.get(item.iqm)
            if spec is None:
                raise ConfigError(f"categories.{cname}.items.{iname}: unknown IQM '{item.iqm}'", path)
            if cfg.region not in spec.regions:
                raise ConfigError(f"categories.{cname}.items.{iname}: IQM '{item.iqm}' is not defined for {cfg.region}", path)


def parse_config(data, path="<config>") -> HierarchyConfig:
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping at the top level", path)
    try:
        cfg = HierarchyConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{loc or 'config'}: {err['msg']}", path) from None
    _check_iqms(cfg, path)
    return cfg


def load_config(path_or_region) -> HierarchyConfig:
    """Load a config file, or the default config for a region name ('head', 'chest')."""
    if path_or_region in DEFAULT_CONFIGS:
        path = CONFIG_DIR / DEFAULT_CONFIGS[path_or_region]
    else:
        path = Path(path_or_region)
    if not path.is_file():
        raise ConfigError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise ConfigError(f"invalid or unsafe YAML ({first})", path) from None
    return parse_config(data, path)
