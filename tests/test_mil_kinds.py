"""The torch-free list of hierarchical models that the Snakefile uses agrees with the model registry."""

from slidesnake.models.mil import MODELS
from slidesnake.models.kinds import HIERARCHY_MODELS


def test_hierarchy_models_match_registry_input_kinds() -> None:
    assert {name for name, cls in MODELS.items() if cls.input_kind == "hierarchy"} == HIERARCHY_MODELS
