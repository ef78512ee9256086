"""MIL model zoo: one module per model, all sharing :class:`slidesnake.models.mil.base.MILModel`.

``build_model(name, in_dim, n_outputs, **kw)`` is how the training loop and the workflow make one.
"""

from __future__ import annotations

from typing import Any

from slidesnake.models.mil.abmil import ABMIL
from slidesnake.models.mil.base import MILModel, MILOutput, MissingCoordsError
from slidesnake.models.mil.clam import CLAMMB, CLAMSB
from slidesnake.models.mil.dsmil import DSMIL
from slidesnake.models.mil.dtfd import DTFD
from slidesnake.models.mil.hipt import HierarchicalMIL
from slidesnake.models.mil.ibmil import IBMIL
from slidesnake.models.mil.mhim import MHIMMIL
from slidesnake.models.mil.patchgcn import PatchGCN
from slidesnake.models.mil.pooling import MaxPool, MeanPool
from slidesnake.models.mil.rrt import RRTMIL
from slidesnake.models.mil.transmil import TransMIL

MODELS: dict[str, type[MILModel]] = {
    "abmil": ABMIL,
    "transmil": TransMIL,
    "clam_sb": CLAMSB,
    "clam_mb": CLAMMB,
    "dsmil": DSMIL,
    "dtfd": DTFD,
    "rrt": RRTMIL,
    "mhim": MHIMMIL,
    "ibmil": IBMIL,
    "patchgcn": PatchGCN,
    "hipt": HierarchicalMIL,
    "meanpool": MeanPool,
    "maxpool": MaxPool,
}


class UnknownModelError(KeyError):
    """A model name that is not in the registry."""


def build_model(name: str, in_dim: int, n_outputs: int, **kw: Any) -> MILModel:
    """Instantiate registry model ``name`` for ``in_dim``-dimensional features and ``n_outputs`` outputs."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown MIL model {name!r} (config key training.models); choose one of {sorted(MODELS)}"
        ) from None
    return cls(in_dim, n_outputs, **kw)


__all__ = ["MODELS", "MILModel", "MILOutput", "MissingCoordsError", "UnknownModelError", "build_model"]
