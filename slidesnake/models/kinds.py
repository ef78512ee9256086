"""Which registry models read the 5x→20x hierarchy file instead of a flat bag.

Kept free of torch so the Snakefile can wire inputs without importing the model zoo at every
parse; tests check it against each model class's ``input_kind``.
"""

HIERARCHY_MODELS: frozenset[str] = frozenset({"hipt"})
