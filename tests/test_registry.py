"""The model registry: declarations on each class, a clear error for unknown names, schema and DAG agree."""

import pytest
import yaml

from slidesnake.config import SCHEMA_PATH, validate_config
from slidesnake.errors import ConfigError
from slidesnake.models import registry
from slidesnake.models.mil import ABMIL, MODELS
from slidesnake.models.registry import INPUTS, RegistryError, UnknownModelError
from slidesnake.validation import ConfigNameError, check_names


def test_schema_enum_lists_exactly_the_registered_models():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    enum = schema["properties"]["training"]["properties"]["models"]["items"]["enum"]
    assert enum == registry.names() == sorted([*MODELS, "hivemil", "vilamil"])


def test_each_model_declares_its_inputs_and_first_stage():
    entries = registry.entries()
    assert all(set(e.inputs) <= set(INPUTS) and e.inputs for e in entries.values())
    assert entries["patchgcn"].inputs == ("features", "coords")
    assert entries["hipt"].inputs == ("hierarchy",)
    assert entries["abmil"].inputs == ("features",)
    assert entries["hivemil"].inputs == entries["vilamil"].inputs == ("hierarchy", "text", "text_encoder")
    assert entries["hivemil"].task_kinds == entries["vilamil"].task_kinds == ("classification",)
    assert {n for n, e in entries.items() if e.first_stage} == {"mhim", "ibmil"}
    assert entries["mhim"].first_stage == entries["ibmil"].first_stage == "abmil"
    assert ABMIL.registry_entry is entries["abmil"]
    assert isinstance(registry.build("abmil", 8, 2), ABMIL)


def test_unknown_model_names_the_config_key_and_the_choices():
    with pytest.raises(UnknownModelError) as err:
        registry.get("abmill")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, KeyError)
    assert "training.models" in str(err.value) and "abmil, clam_mb" in str(err.value)


def test_bad_declarations_fail_at_registration():
    with pytest.raises(RegistryError, match="pixels"):
        registry.register("bad", inputs=("features", "pixels"))
    with pytest.raises(RegistryError, match="regression"):
        registry.register("bad", task_kinds=("regression",))
    assert "bad" not in registry.names()


def test_a_misspelt_model_fails_config_validation():
    with pytest.raises(ConfigError, match="training.models.1"):
        validate_config({"cohort": "c", "training": {"models": ["abmil", "transmill"]}})


def test_a_misspelt_model_in_lr_by_model_names_the_key():
    config = validate_config({"cohort": "c", "training": {"lr_by_model": {"transmill": 2e-4}}})
    with pytest.raises(ConfigNameError, match=r"'training.lr_by_model'.*'transmill'.*did you mean 'transmil'"):
        check_names(config)


def test_task_kind_check_names_the_key():
    registry.check_task_kind("abmil", "survival")
    with pytest.raises(ConfigError, match="training.models"):
        registry.check_task_kind("abmil", "regression")
