"""Spot-level gene expression from H&E: BLEEP and HECLIP (contrastive image-expression models with
retrieval prediction) and the HEST ridge probe on frozen features."""

MODELS = ("bleep", "heclip", "ridge")
