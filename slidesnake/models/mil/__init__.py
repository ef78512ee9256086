"""MIL model zoo: one module per model, all sharing :class:`slidesnake.models.mil.base.MILModel`.

Each model class registers itself with ``@register`` (slidesnake/models/registry.py); importing this
package imports every module, so the registry is complete. ``build_model(name, in_dim, n_outputs, **kw)``
is the registry's ``build``.
"""

from __future__ import annotations

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
from slidesnake.models.registry import UnknownModelError
from slidesnake.models.registry import build as build_model

_CLASSES = (
    ABMIL,
    TransMIL,
    CLAMSB,
    CLAMMB,
    DSMIL,
    DTFD,
    RRTMIL,
    MHIMMIL,
    IBMIL,
    PatchGCN,
    HierarchicalMIL,
    MeanPool,
    MaxPool,
)
# name -> class of the MIL models (the registry holds every model kind; this is the MIL part of it)
MODELS: dict[str, type[MILModel]] = {cls.registry_entry.name: cls for cls in _CLASSES}

__all__ = ["MODELS", "MILModel", "MILOutput", "MissingCoordsError", "UnknownModelError", "build_model"]
