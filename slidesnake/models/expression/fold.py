"""One leave-one-section-out fold: load features and expression by barcode, fit a model, predict the
held-out section, write predicted and measured AnnData (same spots, same genes, same target space)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from slidesnake.io.atomic import atomic_path, write_csv
from slidesnake.models.expression.contrastive import (
    ContrastiveConfig,
    ImageExpressionModel,
    TileFiles,
    embed,
    train_contrastive,
)
from slidesnake.models.expression.data import (
    ExpressionDataError,
    expression_matrix,
    harmonize,
    load_sections,
    select_genes,
)
from slidesnake.models.expression.retrieval import retrieve
from slidesnake.models.expression.ridge import fit_predict
from slidesnake.tissue.spots import barcodes_of_features, read_spot_coords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Section:
    """One section's files: expression h5ad, spots coords h5, spot features h5 (one encoder), tiles h5."""

    name: str
    h5ad: str
    spots: str
    features: str | None = None
    tiles: str | None = None


@dataclass
class FoldData:
    genes: list[str]
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_barcodes: list[str]
    test_section: str
    measured: ad.AnnData
    train_tiles: list[tuple[int, int]] = field(default_factory=list)
    test_tiles: list[tuple[int, int]] = field(default_factory=list)
    tile_paths: list[str] = field(default_factory=list)
    recipe: dict = field(default_factory=dict)


def check_folds(sections: Sequence[str]) -> None:
    if len(sections) < 2:
        raise ExpressionDataError(
            f"leave-one-section-out needs at least 2 sections, got {len(sections)} ({list(sections)}): "
            "add samples to config key 'geo.samples'"
        )


def fold_genes(sections: Mapping[str, str], test: str, selection: str, n_hvg: int, n_heg: int,
               include: Sequence[str] = (), target_sum: float | None = 1e4) -> pd.DataFrame:  # fmt: skip
    """The fold's gene table, from its training sections only."""
    check_folds(list(sections))
    if test not in sections:
        raise ExpressionDataError(f"held-out section {test!r} is not among {list(sections)}")
    train = {name: path for name, path in sections.items() if name != test}
    return select_genes(load_sections(train, target_sum), selection, n_hvg, n_heg, include)


def load_fold(
    sections: Sequence[Section],
    test: str,
    genes: Sequence[str],
    *,
    target_sum: float | None = 1e4,
    harmony: bool = False,
    seed: int = 0,
) -> FoldData:
    """Features and normalised expression of every section joined by barcode (spots without either dropped
    and counted), split into training sections and the held-out one."""
    check_folds([s.name for s in sections])
    by_name = {s.name: s for s in sections}
    if test not in by_name:
        raise ExpressionDataError(f"held-out section {test!r} is not among {list(by_name)}")
    adatas = load_sections({s.name: s.h5ad for s in sections}, target_sum)
    absent = [g for g in genes if g not in next(iter(adatas.values())).var_names]
    if absent:
        raise ExpressionDataError(
            f"{len(absent)} gene(s) of the fold's gene list are not in every section, e.g. {absent[0]}"
        )
    corrected = harmonize(adatas, genes, seed) if harmony else None
    feats, exprs, codes, tiles, tile_paths = {}, {}, {}, {}, []
    for s in sections:
        a = adatas[s.name]
        if s.features is not None:
            x, barcodes = barcodes_of_features(s.features, s.spots)
        else:
            _, barcodes, _ = read_spot_coords(s.spots)
            x = np.zeros((len(barcodes), 0), np.float32)
        keep = [i for i, b in enumerate(barcodes) if b in a.obs_names]
        if len(keep) < len(barcodes):
            log.warning(
                "%s: %d spot(s) with a tile have no expression (all-zero, dropped)", s.h5ad, len(barcodes) - len(keep)
            )
        no_tile = a.n_obs - len(keep)
        if no_tile:
            log.warning("%s: %d spot(s) with expression have no tile (off tissue/image): not used", s.h5ad, no_tile)
        barcodes = [barcodes[i] for i in keep]
        feats[s.name], codes[s.name] = x[keep], barcodes
        if corrected is not None:
            pos = {b: i for i, b in enumerate(a.obs_names)}
            exprs[s.name] = corrected[s.name][[pos[b] for b in barcodes]]
        else:
            exprs[s.name] = expression_matrix(a, genes, barcodes)
        if s.tiles is not None:
            _, tile_codes, _ = read_spot_coords(s.tiles)
            row = {b: i for i, b in enumerate(tile_codes)}
            missing = [b for b in barcodes if b not in row]
            if missing:
                raise ExpressionDataError(f"{s.tiles}: {len(missing)} spot(s) have no tile; rerun spot_tiles")
            tiles[s.name] = [(len(tile_paths), row[b]) for b in barcodes]
            tile_paths.append(s.tiles)
    train = [s.name for s in sections if s.name != test]
    measured = adatas[test][codes[test], list(genes)].copy()
    if corrected is not None:
        measured.X = exprs[test]
    recipe = {
        "target_sum": "none" if target_sum is None else float(target_sum),
        "log1p": True,
        "harmony": bool(harmony),
    }
    measured.uns["expression_target"] = recipe
    return FoldData(
        genes=list(genes),
        train_x=np.concatenate([feats[n] for n in train]),
        train_y=np.concatenate([exprs[n] for n in train]),
        test_x=feats[test],
        test_y=exprs[test],
        test_barcodes=codes[test],
        test_section=test,
        measured=measured,
        train_tiles=[t for n in train for t in tiles.get(n, [])],
        test_tiles=tiles.get(test, []),
        tile_paths=tile_paths,
        recipe=recipe,
    )


def fit_and_predict(model: str, data: FoldData, cfg: ContrastiveConfig, *, pca_dim: int = 256,
                    encoder=None, device="cpu") -> tuple[np.ndarray, list[dict], dict]:  # fmt: skip
    """(predicted held-out expression, training history, bundle) of one model. The bundle holds what a
    later ``predict`` on a new section needs: weights (or the fitted probe), genes, the reference spots'
    retrieval keys and expression."""
    if len(data.train_y) < 2 or len(data.test_y) == 0:
        raise ExpressionDataError(
            f"fold {data.test_section}: {len(data.train_y)} training / {len(data.test_y)} test spots"
        )
    if model == "ridge":
        if data.train_x.shape[1] == 0:
            raise ExpressionDataError("the ridge probe needs frozen spot features (features.encoders)")
        pred, probe = fit_predict(data.train_x, data.train_y, data.test_x, pca_dim=pca_dim, seed=cfg.seed)
        mean = data.train_y.mean(axis=0)
        return pred, [], {"model": "ridge", "genes": data.genes, "probe": probe, "mean": mean}
    import torch

    if cfg.tune == "frozen":
        train_in, test_in = torch.as_tensor(data.train_x), torch.as_tensor(data.test_x)
        dim, tower = data.train_x.shape[1], None
    else:
        if encoder is None or not data.tile_paths:
            raise ExpressionDataError(f"expression.tune={cfg.tune!r} needs spot tiles and an image encoder")
        size = encoder.spec.image_size
        train_in = TileFiles(data.tile_paths, data.train_tiles, augment=True, seed=cfg.seed, image_size=size)
        test_in = TileFiles(data.tile_paths, data.test_tiles, image_size=size)
        dim, tower = encoder.spec.dim, encoder
    net, history = train_contrastive(model, train_in, data.train_y, cfg, image_dim=dim, tower=tower, device=device)
    if isinstance(train_in, TileFiles):
        train_in = TileFiles(
            data.tile_paths, data.train_tiles, image_size=size
        )  # no augmentation for the reference embeddings
    ref_img, ref_spot = embed(net, train_in, data.train_y, device=device)
    keys = ref_spot if model == "bleep" else ref_img
    query, _ = embed(net, test_in, None, device=device)
    pred = retrieve(query, keys, data.train_y, k=cfg.top_k, method=cfg.retrieval)
    bundle = {"model": model, "genes": data.genes, "config": asdict(cfg), "image_dim": dim,
              "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
              "keys": keys, "reference_expression": data.train_y}  # fmt: skip
    return pred, history, bundle


def predict_bundle(
    bundle: dict,
    features: np.ndarray | None = None,
    *,
    tiles: str | os.PathLike | None = None,
    encoder=None,
    k: int | None = None,
    method: str | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """Expression of new spots with a saved fold bundle: ridge or a frozen-feature BLEEP/HECLIP from the
    spots' frozen ``features``; a BLEEP/HECLIP whose tower was tuned from the spots' ``tiles`` file (rows in
    its order), its tuned tower restored from the bundle on top of ``encoder`` (the loaded base encoder)."""
    if bundle["model"] == "ridge" or ContrastiveConfig(**bundle["config"]).tune == "frozen":
        if features is None:
            raise ExpressionDataError(f"a {bundle['model']} model on frozen features predicts from spot features")
        features = np.asarray(features, np.float32)
    if bundle["model"] == "ridge":
        return (bundle["probe"].predict(features) + bundle["mean"]).astype(np.float32)
    import torch

    cfg = ContrastiveConfig(**bundle["config"])
    if cfg.tune == "frozen":
        net = ImageExpressionModel(bundle["model"], bundle["image_dim"], len(bundle["genes"]), cfg)
        inputs = torch.as_tensor(features)
    else:
        if tiles is None or encoder is None:
            raise ExpressionDataError(
                f"this {bundle['model']} model tuned its image tower ({cfg.tune}): predict from the section's "
                "spot tiles (--tiles) with its base encoder"
            )
        net = ImageExpressionModel(bundle["model"], bundle["image_dim"], len(bundle["genes"]), cfg, tower=encoder)
        _, barcodes, _ = read_spot_coords(tiles)
        inputs = TileFiles([str(tiles)], [(0, i) for i in range(len(barcodes))], image_size=encoder.spec.image_size)
    net.load_state_dict(bundle["state_dict"])
    net.to(device)
    query, _ = embed(net, inputs, None, device=device)
    return retrieve(
        query, bundle["keys"], bundle["reference_expression"], k=k or cfg.top_k, method=method or cfg.retrieval
    )


def predictions_anndata(pred: np.ndarray, data: FoldData, model: str, encoder: str) -> ad.AnnData:
    """Predicted spots x genes, with the held-out section's positions and images so sc.pl.spatial draws it."""
    out = ad.AnnData(X=np.asarray(pred, np.float32), obs=data.measured.obs.copy(), var=pd.DataFrame(index=data.genes))
    out.obs_names = data.test_barcodes
    out.obsm["spatial"] = np.asarray(data.measured.obsm["spatial"])
    out.uns["spatial"] = data.measured.uns.get("spatial", {})
    out.uns["expression_target"] = data.recipe
    out.uns["model"] = {"model": model, "encoder": encoder, "held_out": data.test_section}
    return out


def run_fold(
    sections: Sequence[Section],
    test: str,
    genes_tsv: str | os.PathLike,
    model: str,
    encoder_name: str,
    out_dir: str | os.PathLike,
    cfg: ContrastiveConfig,
    *,
    target_sum: float | None = 1e4,
    harmony: bool = False,
    pca_dim: int = 256,
    device: str = "cpu",
) -> ad.AnnData:
    """Train one model on all sections but ``test`` and write predictions.h5ad, measured.h5ad (the truth
    in the same target space), model.pt (the bundle) and history.csv into ``out_dir``."""
    import torch

    from slidesnake.models.expression.data import read_gene_list

    genes = read_gene_list(genes_tsv)
    data = load_fold(sections, test, genes, target_sum=target_sum, harmony=harmony, seed=cfg.seed)
    encoder = None
    if model != "ridge" and cfg.tune != "frozen":
        from slidesnake.features.encoders import load_encoder

        encoder = load_encoder(encoder_name, device)
    pred, history, bundle = fit_and_predict(model, data, cfg, pca_dim=pca_dim, encoder=encoder, device=device)
    out = Path(out_dir)
    predicted = predictions_anndata(pred, data, model, encoder_name)
    for name, adata in (("predictions.h5ad", predicted), ("measured.h5ad", data.measured)):
        with atomic_path(out / name) as tmp:
            adata.write_h5ad(tmp)
    bundle.update(encoder=encoder_name, held_out=test, expression_target=data.recipe)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(bundle, tmp)
    write_csv(out / "history.csv", pd.DataFrame(history or [{"epoch": 0}]))
    log.info("%s/%s fold %s: %d training spots, %d held-out spots x %d genes", model, encoder_name, test,
             len(data.train_y), len(data.test_y), len(genes))  # fmt: skip
    return predicted
