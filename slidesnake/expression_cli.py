"""``slidesnake spots`` and ``slidesnake expression genes|train|predict|metrics|summary``: thin wrappers
over the library functions the expression rules call."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("slidesnake")


def _sections(specs: list[str]):
    """``NAME=H5AD,SPOTS[,FEATURES[,TILES]]`` -> Section objects (empty fields allowed)."""
    from slidesnake.models.expression.fold import Section

    out = []
    for spec in specs:
        name, sep, files = spec.partition("=")
        parts = files.split(",")
        if not sep or len(parts) < 2:
            raise ValueError(f"--section expects NAME=H5AD,SPOTS[,FEATURES[,TILES]], got {spec!r}")
        parts += [""] * (4 - len(parts))
        out.append(Section(name, parts[0], parts[1], parts[2] or None, parts[3] or None))
    return out


def cmd_spots(args: argparse.Namespace) -> int:
    import anndata as ad

    from slidesnake.tissue.spots import library, readable_image, write_spot_coords, write_spot_tiles

    adata = ad.read_h5ad(args.h5ad)
    _, entry = library(adata)
    image = args.image or entry["metadata"].get("source_image_path")
    if not image:
        raise ValueError(f"{args.h5ad}: no source image recorded; pass --image")
    image = readable_image(image, Path(args.out).with_suffix(".image.tif"), entry.get("pitch_mpp") or 0.5)
    counts = write_spot_coords(adata, image, args.out, tile_um=args.tile_um, target_mpp=args.target_mpp)
    if args.tiles:
        write_spot_tiles(image, args.out, args.tiles)
    print(
        f"{args.h5ad}: {counts['ok']} spot tiles, {counts['off_tissue']} off tissue, {counts['off_image']} off image -> {args.out}"
    )
    return 0


def cmd_genes(args: argparse.Namespace) -> int:
    from slidesnake.models.expression.data import write_gene_table
    from slidesnake.models.expression.fold import fold_genes

    sections = {s.name: s.h5ad for s in _sections(args.section)}
    table = fold_genes(sections, args.held_out, args.genes, args.n_hvg, args.n_heg, args.include, _target(args))
    write_gene_table(table, args.out)
    print(f"{int(table['selected'].sum())} genes ({args.genes}) for held-out {args.held_out} -> {args.out}")
    return 0


def _target(args) -> float | None:
    return None if args.target_sum <= 0 else args.target_sum


def cmd_train(args: argparse.Namespace) -> int:
    from slidesnake.models.expression.contrastive import ContrastiveConfig
    from slidesnake.models.expression.fold import run_fold

    cfg = ContrastiveConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, tune=args.tune,
                            top_k=args.top_k, retrieval=args.retrieval, seed=args.seed)  # fmt: skip
    run_fold(_sections(args.section), args.held_out, args.genes, args.model, args.encoder, args.out, cfg,
             target_sum=_target(args), harmony=args.harmony, device=args.device)  # fmt: skip
    print(f"{args.model} ({args.encoder}) held out {args.held_out} -> {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import anndata as ad
    import numpy as np
    import pandas as pd
    import torch

    from slidesnake.io.atomic import atomic_path
    from slidesnake.models.expression.fold import predict_bundle
    from slidesnake.tissue.spots import barcodes_of_features, read_spot_coords

    bundle = torch.load(args.model, weights_only=False)
    tuned = bundle["model"] != "ridge" and bundle["config"].get("tune", "frozen") != "frozen"
    if tuned:
        if not args.tiles:
            raise ValueError(f"{args.model}: its image tower was tuned ({bundle['config']['tune']}); pass --tiles")
        from slidesnake.features.encoders import load_encoder

        encoder = load_encoder(args.encoder or bundle["encoder"], args.device)
        _, barcodes, _ = read_spot_coords(args.tiles)
        pred = predict_bundle(bundle, tiles=args.tiles, encoder=encoder, k=args.top_k, method=args.retrieval,
                              device=args.device)  # fmt: skip
    else:
        if not (args.features and args.spots):
            raise ValueError(f"{args.model}: a {bundle['model']} model on frozen features needs --features and --spots")
        feats, barcodes = barcodes_of_features(args.features, args.spots)
        pred = predict_bundle(bundle, feats, k=args.top_k, method=args.retrieval)
    out = ad.AnnData(
        np.asarray(pred, np.float32), obs=pd.DataFrame(index=barcodes), var=pd.DataFrame(index=bundle["genes"])
    )
    out.uns["expression_target"] = bundle.get("expression_target", {})
    with atomic_path(args.out) as tmp:
        out.write_h5ad(tmp)
    print(f"{len(barcodes)} spots x {len(bundle['genes'])} genes -> {args.out}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from slidesnake.evaluate.expression import compare_files

    metrics = compare_files(args.predicted, args.measured, args.out, markers=args.marker)
    print(metrics.to_string(index=False))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("spots", help="Visium spot-centred tile coords (and optionally tiles) of one section")
    p.add_argument("h5ad", help="section AnnData from the Visium reader")
    p.add_argument("--image", help="full-resolution image (default: the one recorded in the AnnData)")
    p.add_argument("--out", required=True, help="spots coords h5")
    p.add_argument("--tiles", help="also write the tiles h5 (pixels for tuning image towers)")
    p.add_argument("--tile-um", type=float, default=112.0, help="tile side in µm (HEST: 112)")
    p.add_argument("--target-mpp", type=float, default=0.5, help="µm per pixel tiles are read at")
    p.set_defaults(func=cmd_spots)

    p = sub.add_parser("expression", help="spot expression from H&E: genes, train, predict, metrics")
    esub = p.add_subparsers(dest="expression_command", required=True, metavar="STEP")

    def sections(q):
        q.add_argument("--section", action="append", required=True, metavar="NAME=H5AD,SPOTS[,FEATURES[,TILES]]")
        q.add_argument("--held-out", required=True, help="the section left out (the fold)")
        q.add_argument("--target-sum", type=float, default=1e4, help="normalize_total target; <= 0: log1p only")

    q = esub.add_parser("genes", help="the fold's gene table (HVG/HEG from its training sections)")
    sections(q)
    q.add_argument("--genes", default="hvg", choices=("hvg", "heg", "hvg+heg", "all"))
    q.add_argument("--n-hvg", type=int, default=1000)
    q.add_argument("--n-heg", type=int, default=3200)
    q.add_argument("--include", action="append", default=[], help="genes always kept (markers)")
    q.add_argument("--out", required=True, help="genes.tsv")
    q.set_defaults(func=cmd_genes)

    q = esub.add_parser("train", help="train one model on a fold, predict its held-out section")
    sections(q)
    q.add_argument("--model", required=True, choices=("bleep", "heclip", "ridge"))
    q.add_argument("--encoder", default="tiny-clip", help="encoder of the features (or the tower to tune)")
    q.add_argument("--genes", required=True, help="genes.tsv from `expression genes`")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--epochs", type=int, default=15)
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--tune", default="frozen", choices=("frozen", "last_blocks", "full"))
    q.add_argument("--top-k", type=int, default=50)
    q.add_argument("--retrieval", default="average", choices=("average", "simple", "weighted"))
    q.add_argument("--harmony", action="store_true")
    q.add_argument("--seed", type=int, default=42)
    q.add_argument("--device", default="cpu")
    q.set_defaults(func=cmd_train)

    q = esub.add_parser("predict", help="predict a new section's spots with a trained fold's model.pt")
    q.add_argument("--model", required=True, help="model.pt from `expression train`")
    q.add_argument("--features", help="the section's spot features h5 (ridge, frozen-feature models)")
    q.add_argument("--spots", help="the section's spots coords h5 (with --features)")
    q.add_argument("--tiles", help="the section's spot tiles h5 (models that tuned their image tower)")
    q.add_argument("--encoder", help="base encoder of a tuned model (default: the one it was trained from)")
    q.add_argument("--device", default="cpu")
    q.add_argument("--out", required=True, help="predictions.h5ad")
    q.add_argument("--top-k", type=int)
    q.add_argument("--retrieval", choices=("average", "simple", "weighted"))
    q.set_defaults(func=cmd_predict)

    q = esub.add_parser("metrics", help="per-gene Pearson, HEG-k/HVG-k, markers, hit@K of predicted vs measured")
    q.add_argument("--predicted", required=True, help="predictions.h5ad")
    q.add_argument("--measured", required=True, help="measured AnnData (normalised like training if raw counts)")
    q.add_argument("--out", required=True, help="metrics.csv (per-gene table beside it: *_genes.csv)")
    q.add_argument("--marker", action="append", default=[], help="marker gene (repeatable)")
    q.set_defaults(func=cmd_metrics)
