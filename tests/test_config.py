"""Hierarchy configs: shipped ones validate; every kind of mistake is refused with file and key."""

from __future__ import annotations

import copy

import pytest
import yaml

from qc.config import CONFIG_DIR, load_config, parse_config
from qc.errors import ConfigError


def _head():
    return yaml.safe_load((CONFIG_DIR / "head_ct.yaml").read_text())


def test_shipped_configs_validate_and_name_the_categories():
    head, chest = load_config("head"), load_config("chest")
    assert set(head.categories) == {"coverage", "scan_baseline", "radiation_protection", "positioning",
                                    "noise_contrast", "artifacts", "window", "dose"}
    assert set(chest.categories) == {"coverage", "positioning", "inspiration_motion", "noise", "window_kernel",
                                     "dose", "artifacts"}
    for cfg in (head, chest):
        assert cfg.source.kind == "rubric" and "NOT fitted" in cfg.source.description
        assert sum(cfg.overall.weights.values()) == pytest.approx(1.0)


def _write(tmp_path, data):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_unknown_iqm_rejected_with_name_and_file(tmp_path):
    data = _head()
    data["categories"]["coverage"]["items"]["vertex_included"]["iqm"] = "vertex_margn_mm"
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "vertex_margn_mm" in str(err.value) and str(p) in str(err.value)
    assert "categories.coverage.items.vertex_included" in str(err.value)


def test_iqm_of_other_region_rejected():
    data = _head()
    data["categories"]["coverage"]["items"]["vertex_included"]["iqm"] = "lung_apex_margin_mm"
    with pytest.raises(ConfigError, match="not defined for head"):
        parse_config(data)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["categories"]["coverage"]["items"]["vertex_included"].update(acceptable=[30, 0]), "low > high"),
        (lambda d: d["categories"]["coverage"]["items"]["vertex_included"].update(zero_at=[5, None]), "zero_at low"),
        (lambda d: d["categories"]["coverage"]["items"]["vertex_included"].update(zero_at=[None, None]), "open"),
        (lambda d: d["categories"]["coverage"].update(colour="red"), "colour"),
        (lambda d: d["overall"]["weights"].pop("dose"), "missing \\['dose'\\]"),
        (lambda d: d["overall"]["weights"].update(dose=-1), ">= 0"),
        (lambda d: d.update(region="knee"), "region"),
        (lambda d: d["categories"]["coverage"]["items"]["vertex_included"].update(weight=-2), "weight"),
    ],
)
def test_invalid_configs_refused(mutate, match):
    data = copy.deepcopy(_head())
    mutate(data)
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_python_object_tag_refused(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("region: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="unsafe YAML"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
