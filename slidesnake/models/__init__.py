"""Models: the registry (registry.py) and the model families that register in it (mil/, vl/)."""
