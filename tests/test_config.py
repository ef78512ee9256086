"""The config schema: defaults filled, wrong keys and types named (the CLI's path; Snakemake's is in test_workflow)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import REPO

from slidesnake.config import ConfigError, load_config, validate_config
from slidesnake.naming import encoder_slug


def test_default_config_is_valid_and_gets_defaults() -> None:
    config = load_config(REPO / "config" / "config.yaml")
    assert config["training"]["lr"] == 1e-4 and config["training"]["weight_decay"] == 1e-5
    assert config["training"]["dropout"] == 0.25
    assert config["patching"]["magnifications"] == [5, 20]
    assert config["evaluation"]["bootstrap"] == 1000


@pytest.mark.parametrize("path", sorted((REPO / "config" / "cohorts").glob("*.yaml")), ids=lambda p: p.name)
def test_cohort_configs_are_valid(path) -> None:
    config = load_config(path)
    assert config["cohort"] == path.stem or config["cohort"]


@pytest.mark.parametrize(
    "config, key",
    [
        ({"cohort": "x", "training": {"epoch": 3}}, "training"),
        ({"cohort": "x", "features": {"batch_size": "64"}}, "features.batch_size"),
        ({"cohort": "x", "segmentation": {"params": {"sthresh": 300}}}, "segmentation.params.sthresh"),
        ({"cohort": "x", "tasks": {"t": {"kind": "regression"}}}, "tasks.t.kind"),
        ({"cohort": "x", "patching": {"magnifications": [10]}}, "patching.magnifications.0"),
    ],
)
def test_errors_name_the_key(config, key) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate_config(config)


def test_unreadable_yaml_names_the_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cohort: [unclosed\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_config(path)


@pytest.mark.parametrize(
    "name, slug",
    [
        ("tiny-clip", "tiny-clip"),
        ("hf-hub:wisdomik/QuiltNet-B-32", "hf-hub_wisdomik_QuiltNet-B-32"),
        ("/models/plip/", "plip"),
    ],
)
def test_encoder_slugs_are_path_safe(name, slug) -> None:
    assert encoder_slug(name) == slug


def test_schema_ships_inside_the_package_and_sets_the_new_defaults() -> None:
    import slidesnake
    from slidesnake.config import SCHEMA_PATH

    assert Path(str(SCHEMA_PATH)).parent == Path(slidesnake.__file__).parent
    assert not (REPO / "config" / "schema.yaml").exists()  # one schema, the packaged one
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "schema.yaml" in pyproject["tool"]["setuptools"]["package-data"]["slidesnake"]
    config = validate_config({"cohort": "x"})
    assert config["training"]["balance"] == "weight" and config["evaluation"]["unit"] == "patient"
    with pytest.raises(ConfigError, match="'evaluation.unit'"):
        validate_config({"cohort": "x", "evaluation": {"unit": "case"}})
