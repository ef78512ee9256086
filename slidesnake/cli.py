"""The ``slidesnake`` command: each subcommand is a thin wrapper over the library functions the rules call.

Per-slide commands follow the pipeline's fault policy: a bad slide still gets its output with a
status and the command exits 0 with a warning, so scripted cohorts go on (``segment`` on an unreadable
slide exits 2, after writing its status). Any slidesnake error
becomes one line on stderr, no traceback: exit 2 for bad input or config (``InputError``), 1 for a
failed computation (``ComputationError``).

Start-up is kept cheap (``slidesnake segment --help`` must not import torch, pandas or anndata): every
library import lives inside the command that needs it (``slidesnake.errors`` imports nothing heavy).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from slidesnake import __version__
from slidesnake.errors import ConfigError, InputError, SlidesnakeError

log = logging.getLogger("slidesnake")
EXIT_CONFIG = InputError.exit_code
EXIT_UNREADABLE = InputError.exit_code  # bad input: the slide file itself


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _key_values(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--param expects KEY=VALUE, got {pair!r}")
        out[key] = _parse_value(value)
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from slidesnake.data.demo import DemoConfig, demo_sheet, write_demo_slide, write_demo_tables

    cfg = DemoConfig(
        n_patients=args.n_patients, slides_per_patient=args.slides_per_patient, size=args.size, seed=args.seed
    )
    out = Path(args.out)
    slide_dir = out / "slides"
    sheet = demo_sheet(cfg, slide_dir)
    for slide_id, path in zip(sheet["slide_id"], sheet["path"]):
        write_demo_slide(cfg, slide_id, path)
        log.info("wrote %s", path)
    write_demo_tables(cfg, out / "slides.tsv", out / "clinical.parquet", out / "mutations.parquet", slide_dir=slide_dir)
    print(f"demo cohort: {len(sheet)} slides in {slide_dir}, sheet {out / 'slides.tsv'}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from slidesnake.io.atomic import write_json
    from slidesnake.tissue.qc import render_qc
    from slidesnake.tissue.segmentation import UNREADABLE_PREFIX, params_from_config, segment_slide

    params = params_from_config(args.preset, _key_values(args.param))
    record = segment_slide(args.slide, params, fallback_mpp=args.mpp_fallback)
    write_json(args.out, record)
    if args.geojson:
        from slidesnake.tissue.geojson import write_tissue_geojson

        write_tissue_geojson(args.geojson, record)
    if args.qc:
        render_qc(args.slide, record, None, args.qc)
    _warn_status(args.slide, record["status"])
    print(f"{args.slide}: {record['status']}, {len(record.get('contours', []))} tissue contours -> {args.out}")
    # the JSON still records the status (the pipeline's job goes on); a person or script calling the
    # command on one slide learns from the exit code that the slide could not be read
    return EXIT_UNREADABLE if record["status"].startswith(UNREADABLE_PREFIX) else 0


def cmd_patch(args: argparse.Namespace) -> int:
    from slidesnake.io.coords import read_coords
    from slidesnake.tissue.patching import patch_slide

    n = patch_slide(
        args.tissue,
        float(args.mag),
        args.out,
        patch_size=args.patch_size,
        min_tissue_fraction=args.min_tissue_fraction,
        allow_upsample=args.allow_upsample,
        fallback_mpp=args.mpp_fallback,
    )
    _, attrs = read_coords(args.out)
    _warn_status(args.slide, str(attrs.get("status", "ok")))
    print(f"{args.slide}: {n} patches at {args.mag}x -> {args.out}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from slidesnake.features.extract import extract_features

    if len(args.encoder) != len(args.out):
        raise InputError(f"give one --out per --encoder ({len(args.encoder)} encoders, {len(args.out)} outputs)")
    counts = extract_features(
        args.slide,
        args.coords,
        args.encoder,
        args.out,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        fallback_mpp=args.mpp_fallback,
    )
    for encoder, out, n in zip(args.encoder, args.out, counts):
        print(f"{args.slide}: {n} patches embedded with {encoder} -> {out}")
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    from slidesnake.features.encoders import list_encoders

    rows = [
        (s.name, s.family, str(s.dim), str(s.image_size), "yes" if s.normalized else "no", s.source)
        for s in list_encoders()
    ]
    header = ("name", "family", "dim", "image", "l2-norm", "source")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    from slidesnake.hierarchy import link_files

    hier = link_files(args.f5, args.f20, args.out)
    print(f"{len(hier.parent_coords)} 5x parents, {int(hier.mask.sum())} linked 20x children -> {args.out}")
    return 0


def _task_config(args: argparse.Namespace) -> tuple[dict, dict]:
    from slidesnake.config import load_config

    config = load_config(args.config)
    if args.task not in config["tasks"]:
        raise ConfigError(f"task {args.task!r} is not in {args.config} (tasks: {sorted(config['tasks'])})")
    return config, config["tasks"][args.task]


def _task_labels(args: argparse.Namespace):
    from slidesnake.tasks import load_task_labels

    config, task_cfg = _task_config(args)
    return (
        config,
        *load_task_labels(args.task, task_cfg, args.sheet, clinical=args.clinical, mutations=args.mutations),
    )


def cmd_splits(args: argparse.Namespace) -> int:
    from slidesnake.io.atomic import write_csv
    from slidesnake.train.splits import make_splits

    config, _, labels = _task_labels(args)
    training = config["training"]
    if args.few_shot:
        return _fewshot_splits(args, labels, training["split_seed"])
    folds = make_splits(
        labels,
        k=training["folds"],
        val_fraction=training["val_fraction"],
        seed=training["split_seed"],
    )
    write_csv(args.out, folds)
    print(f"{folds['case_id'].nunique()} patients in {training['folds']} folds -> {args.out}")
    return 0


def _fewshot_splits(args: argparse.Namespace, labels, seed: int) -> int:
    """``splits --few-shot N [N ...]``: one fewshot{N}.csv per N (``--out`` holds ``{N}`` when several)."""
    from slidesnake.io.atomic import write_csv
    from slidesnake.train.splits import make_fewshot_splits

    if len(args.few_shot) > 1 and "{N}" not in args.out:
        raise ValueError(f"--out {args.out!r}: with several --few-shot values it must contain {{N}}")
    tables = make_fewshot_splits(labels, args.few_shot, repeats=args.repeats, seed=seed)
    for n, table in tables.items():
        out = args.out.replace("{N}", str(n))
        write_csv(out, table)
        print(f"{n}-shot x {args.repeats} repeats -> {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import pandas as pd

    from slidesnake.train.loop import TrainParams, train_fold
    from slidesnake.validation import hier_prompt_path

    config, task, labels = _task_labels(args)
    training = config["training"]
    params = TrainParams(
        **{
            k: training[k]
            for k in (
                "epochs",
                "patience",
                "lr",
                "weight_decay",
                "dropout",
                "seed",
                "max_instances",
                "balance",
                "device",
            )
        }
    )
    features = {p.stem: str(p) for p in sorted(Path(args.features).glob("*.h5"))}
    hierarchy = {p.stem: str(p) for p in sorted(Path(args.hierarchy).glob("*.h5"))} if args.hierarchy else None
    folds = pd.read_csv(args.folds, dtype={"slide_id": str, "case_id": str})
    prompts = config["tasks"][args.task].get("hier_prompts")  # text models (hivemil, vilamil) only
    train_fold(
        task,
        args.model,
        features,
        labels,
        folds,
        args.fold,
        params,
        args.out,
        hierarchy=hierarchy,
        first_stage=args.first_stage,
        text_encoder=args.text_encoder or training["encoder"],
        hier_prompts=str(hier_prompt_path(prompts, Path.cwd())) if prompts else None,
    )
    print(f"trained {args.model} on {task.name} fold {args.fold} -> {args.out}")
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from slidesnake.features.bags import read_bag_index
    from slidesnake.io.atomic import write_parquet
    from slidesnake.models.vl.zeroshot import FULL_SET, TOP_K, ZeroShotParams, read_text_bank, score_cohort

    bank = read_text_bank(args.text)
    params = ZeroShotParams(top_k=args.top_k, ks=TOP_K, n_prompt_sets=args.prompt_sets, smoothing_k=args.smoothing_k)
    scores = score_cohort(read_bag_index(args.bags).features(args.magnification), bank, params)
    chosen = scores[(scores["prompt_set"] == FULL_SET) & (scores["k"] == args.top_k)]
    write_parquet(args.out, chosen.drop(columns=["prompt_set"]).reset_index(drop=True))
    if args.sets_out:
        write_parquet(args.sets_out, scores)
    print(f"zero-shot: {len(chosen)} slides, classes {bank.classes}, top-{args.top_k} -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from slidesnake.evaluate.metrics import evaluate_predictions
    from slidesnake.io.atomic import write_csv
    from slidesnake.tasks import task_from_config

    config, task_cfg = _task_config(args)
    task = task_from_config(args.task, task_cfg)
    metrics = evaluate_predictions(
        task,
        args.predictions,
        n_bootstrap=config["evaluation"]["bootstrap"],
        seed=config["evaluation"]["seed"],
        unit=config["evaluation"]["unit"],
    )
    write_csv(args.out, metrics)
    print(metrics.to_string(index=False))
    return 0


def cmd_heatmaps(args: argparse.Namespace) -> int:
    from slidesnake.evaluate.heatmaps import slide_heatmaps, test_split_heatmaps

    out = Path(args.out_dir)
    common = {"k": args.top_k, "device": args.device, "fallback_mpp": args.mpp_fallback}
    if args.bags:
        from slidesnake.features.bags import read_bag_index

        if args.folds is None or args.fold is None:
            raise ValueError("--bags needs --folds and --fold (the fold whose test slides the model scores)")
        bags = read_bag_index(args.bags)
        done = test_split_heatmaps(
            args.model,
            args.folds,
            args.fold,
            bags.slides(),
            bags.features(args.magnification),
            out,
            hierarchy=bags.hierarchy() or None,
            **common,
        )
        print(f"{len(done)} test slides of fold {args.fold} -> {out}")
        return 0
    if not (args.slide and args.features):
        raise ValueError("give --slide and --features (one slide), or --bags, --folds and --fold (a fold's test split)")
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.slide).stem
    n = slide_heatmaps(
        args.model,
        args.slide,
        args.features,
        out / f"{stem}.heatmap.png",
        out / f"{stem}.top{args.top_k}.png",
        hierarchy_h5=args.hierarchy,
        title=stem,
        **common,
    )
    print(f"{args.slide}: {n} patches scored -> {out / (stem + '.heatmap.png')}")
    return 0


def _warn_status(slide: str, status: str) -> None:
    if status != "ok":
        log.warning("%s: %s", slide, status)


# ---- HLIP (issue 14): captions, tune, retrieval -----------------------------------------------------


def cmd_captions(args: argparse.Namespace) -> int:
    from slidesnake.data.captions import write_clinical_captions

    fields = args.fields.split(",") if args.fields else None
    captions = write_clinical_captions(args.clinical, args.out, args.sheet, fields)
    for row in captions.head(args.show).itertuples():
        print(f"{row.case_id}: {row.caption}")
    return 0


def cmd_tiles(args: argparse.Namespace) -> int:
    from slidesnake.features.tiles import sample_tiles

    slide_id = args.slide_id or Path(args.slide).stem
    n = sample_tiles(
        args.slide, args.coords, args.out, slide_id=slide_id, magnification=args.mag,
        tiles_per_slide=args.k, seed=args.seed, fallback_mpp=args.mpp_fallback,
    )  # fmt: skip
    print(f"{slide_id}: {n} tiles -> {args.out}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    if args.method == "cplip":
        return _tune_cplip(args)
    _require("hlip", {"--tiles": args.tiles, "--captions": args.captions})
    from slidesnake.train.contrastive import hlip_params, tune_hlip_files

    params = hlip_params(epochs=args.epochs, lr=args.lr, patience=args.patience, seed=args.seed, device=args.device)
    history = tune_hlip_files(
        args.base, args.tiles, args.captions, args.folds, args.sheet, args.fold, args.out,
        name=args.name, batch_size=args.batch_size, params=params, num_workers=args.num_workers,
        sentence_prob=args.sentence_prob, wise_alpha=args.wise_alpha,
    )  # fmt: skip
    _print_history(history)
    return 0


def _tune_cplip(args: argparse.Namespace) -> int:
    """CPLIP alignment with the config's ``vl.cplip`` settings (fold, bags, tau, optimisation) and task."""
    needed = {"--config": args.config, "--task": args.task, "--dictionary": args.dictionary}
    _require("cplip", needed | {"--coords": args.coords, "--slides": args.slides})
    from slidesnake.train.contrastive import align_prompt_bags_files

    config, task_cfg = _task_config(args)
    cplip = {**config["vl"]["cplip"], "fold": args.fold}
    history = align_prompt_bags_files(
        args.base, args.dictionary, (args.task, task_cfg), args.sheet, args.coords, args.slides, args.folds,
        args.out, cplip, name=args.name or f"{Path(args.base).name}-cplip", clinical=args.clinical,
        mutations=args.mutations, fallback_mpp=args.mpp_fallback,
    )  # fmt: skip
    _print_history(history)
    return 0


def _require(method: str, flags: dict[str, Any]) -> None:
    """ConfigError naming every flag of ``flags`` that ``slidesnake tune --method <method>`` lacks."""
    missing = [flag for flag, value in flags.items() if not value]
    if missing:
        raise ConfigError(f"slidesnake tune --method {method} needs {', '.join(missing)}")


def _print_history(history: list[dict[str, float]]) -> None:
    for row in history:
        print(", ".join(f"{k} {v:.4g}" for k, v in row.items()))


def cmd_retrieval(args: argparse.Namespace) -> int:
    from slidesnake.evaluate.retrieval import RetrievalParams, run_retrieval

    params = RetrievalParams(repeats=args.repeats, seed=args.seed, threshold=args.threshold)
    task = None
    if args.task:
        from slidesnake.config import load_config

        task = (args.task, load_config(args.config)["tasks"][args.task])
    metrics = run_retrieval(
        args.encoder, args.features, args.captions, args.clinical, args.folds, args.sheet, args.fold,
        args.out, args.maps, args.figure, text_h5=args.text, task=task, params=params, device=args.device,
    )  # fmt: skip
    print(metrics.to_string(index=False))
    return 0


def _add_hlip_commands(sub: Any) -> None:
    p = sub.add_parser("captions", help="one clinical paragraph per case (12 fields, missing ones omitted)")
    p.add_argument("--clinical", required=True, help="clinical.parquet")
    p.add_argument("--sheet", help="slide sheet TSV: caption only its cases (and name those without a record)")
    p.add_argument("--fields", help="comma-separated paragraph order, e.g. stage,grade,primary_diagnosis")
    p.add_argument("--out", required=True, help="captions parquet")
    p.add_argument("--show", type=int, default=3, help="print the first N captions")
    p.set_defaults(func=cmd_captions)

    p = sub.add_parser("tiles", help="fixed-seed sample of at most K tiles of one slide -> tiles h5")
    p.add_argument("slide")
    p.add_argument("--coords", required=True, help="patches/{mag}x/{slide_id}.h5")
    p.add_argument("--out", required=True)
    p.add_argument("--slide-id")
    p.add_argument("--mag", type=int, default=20)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mpp-fallback", type=float)
    p.set_defaults(func=cmd_tiles)

    p = sub.add_parser(
        "tune", help="contrastive tuning of an encoder: clinical captions (HLIP) or a prompt dictionary (CPLIP)"
    )
    p.add_argument("--method", choices=["hlip", "cplip"], default="hlip")
    p.add_argument("--base", required=True, help="encoder to tune (registry name, hf-hub id, folder)")
    p.add_argument("--tiles", nargs="+", help="hlip: tiles/{mag}x/{slide_id}.h5 files")
    p.add_argument("--captions", help="hlip: captions parquet from `slidesnake captions`")
    p.add_argument("--config", help="cplip: config whose vl.cplip settings and tasks.<task> apply")
    p.add_argument("--task", help="cplip: the task whose classes the dictionary names")
    p.add_argument("--dictionary", help="cplip: prompt dictionary JSON (class -> texts)")
    p.add_argument("--coords", nargs="+", help="cplip: patches/{mag}x/{slide_id}.h5 coords files")
    p.add_argument("--slides", nargs="+", help="cplip: the slide files, in the order of --coords")
    p.add_argument("--clinical", help="cplip: clinical.parquet, for a clinical-column task")
    p.add_argument("--mutations", help="cplip: mutations.parquet, for a mutation task")
    p.add_argument("--mpp-fallback", type=float)
    p.add_argument("--folds", required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--sheet", required=True)
    p.add_argument("--out", required=True, help="encoder folder to write")
    p.add_argument("--name")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument(
        "--sentence-prob", type=float, default=0.5, help="chance a case shows one field sentence, not its paragraph"
    )
    p.add_argument("--wise-alpha", type=float, default=1.0, help="save (1-a)*base + a*tuned weights (WiSE-FT)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("retrieval", help="HLIP retrieval metrics of one encoder on a fold's test slides")
    p.add_argument("--encoder", required=True)
    p.add_argument("--features", nargs="+", required=True, help="features/{encoder}/{mag}x/{slide_id}.h5 files")
    p.add_argument("--captions", required=True)
    p.add_argument("--clinical", required=True)
    p.add_argument("--folds", required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--sheet", required=True)
    p.add_argument("--text", help="class-prompt text h5 for zero-shot F1@K (with --task)")
    p.add_argument("--task")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--threshold", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="metrics.csv")
    p.add_argument("--maps")
    p.add_argument("--figure")
    p.set_defaults(func=cmd_retrieval)


def build_parser() -> argparse.ArgumentParser:
    """The full command tree; ``slidesnake COMMAND --help`` documents each command."""
    parser = argparse.ArgumentParser(prog="slidesnake", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"slidesnake {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="write the synthetic demo cohort (slides, sheet, clinical, mutations)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-patients", type=int, default=10)
    p.add_argument("--slides-per-patient", type=int, default=2)
    p.add_argument("--size", type=int, default=8192, help="level-0 side at 40x, pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("segment", help="tissue contours of one slide -> JSON (and a QC picture)")
    p.add_argument("slide")
    p.add_argument("--out", required=True, help="tissue JSON")
    p.add_argument("--qc", help="QC PNG with contours and holes")
    p.add_argument("--geojson", help="also write the contours as GeoJSON (QuPath, TRIDENT)")
    p.add_argument("--preset", default="default", help="segmentation preset: default, tcga, biopsy")
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="override a preset value, e.g. a_t=16"
    )
    p.add_argument("--mpp-fallback", type=float, help="µm/px when the slide records no resolution")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("patch", help="patch grid of one slide at one magnification -> coords h5")
    p.add_argument("slide")
    p.add_argument("--tissue", required=True, help="tissue JSON from `slidesnake segment`")
    p.add_argument("--mag", type=int, choices=(5, 20), required=True)
    p.add_argument("--out", required=True, help="coords h5")
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--min-tissue-fraction", type=float, default=0.0)
    p.add_argument("--allow-upsample", action="store_true", help="upsample slides coarser than the target")
    p.add_argument("--mpp-fallback", type=float)
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("extract", help="patch features of one slide with one or more encoders")
    p.add_argument("slide")
    p.add_argument("--coords", required=True, help="coords h5 from `slidesnake patch`")
    p.add_argument(
        "--encoder", action="append", required=True, help="registry name, hf-hub id or local path (repeatable)"
    )
    p.add_argument("--out", action="append", required=True, help="features h5, one per --encoder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--mpp-fallback", type=float)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("encoders", help="list the encoder registry")
    p.set_defaults(func=cmd_encoders)

    p = sub.add_parser("link", help="link 5x patches to their 16 20x children")
    p.add_argument("--f5", required=True, help="5x features h5")
    p.add_argument("--f20", required=True, help="20x features h5 (same encoder)")
    p.add_argument("--out", required=True, help="hierarchical h5")
    p.set_defaults(func=cmd_link)

    def task_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default="config/config.yaml", help="pipeline config with the task definitions")
        p.add_argument("--task", required=True)
        p.add_argument("--sheet", required=True, help="slide sheet TSV")
        p.add_argument("--clinical", help="clinical.parquet (survival tasks)")
        p.add_argument("--mutations", help="mutations.parquet (mutation and TMB tasks)")

    p = sub.add_parser("splits", help="patient-level stratified k-fold train/val/test splits")
    task_args(p)
    p.add_argument("--out", required=True, help="folds.csv (few-shot: fewshot{N}.csv)")
    p.add_argument("--few-shot", type=int, nargs="+", metavar="N", help="few-shot splits: N train slides per class")
    p.add_argument("--repeats", type=int, default=5, help="few-shot repeats (fixed seeds)")
    p.set_defaults(func=cmd_splits)

    p = sub.add_parser("train", help="train one model on one fold")
    task_args(p)
    p.add_argument("--model", default="abmil")
    p.add_argument("--features", required=True, help="folder of per-slide features h5")
    p.add_argument("--hierarchy", help="folder of per-slide hierarchical h5 (hierarchical models)")
    p.add_argument("--first-stage", help="the same fold's first-stage model.pt (two-stage models: mhim, ibmil)")
    p.add_argument(
        "--text-encoder",
        help="hivemil/vilamil: the encoder whose text tower reads the task's hier_prompts (default training.encoder; "
        "a pipeline-trained one by its folder, e.g. results/demo/encoders/demo-clip)",
    )
    p.add_argument("--folds", required=True, help="folds.csv from `slidesnake splits`")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder (model.pt, history.csv, predictions.parquet)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test metrics over folds with bootstrap CIs")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--task", required=True)
    p.add_argument("predictions", nargs="+", help="predictions.parquet of each fold")
    p.add_argument("--out", required=True, help="metrics.csv")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("heatmaps", help="attention heatmap and top-k patches of one slide, or of a fold's test split")
    p.add_argument("--model", required=True, help="model.pt of one fold (from `slidesnake train`)")
    p.add_argument("--slide", help="slide file (one-slide mode)")
    p.add_argument("--features", help="the slide's features h5 at the model's magnification (one-slide mode)")
    p.add_argument("--hierarchy", help="the slide's hierarchical h5 (hierarchical models)")
    p.add_argument("--bags", help="bag index bags.tsv (fold mode: every test slide of --fold)")
    p.add_argument("--folds", help="folds.csv (fold mode)")
    p.add_argument("--fold", type=int, help="fold number (fold mode)")
    p.add_argument("--magnification", type=int, choices=(5, 20), default=20, help="features magnification (fold mode)")
    p.add_argument("--out-dir", required=True, help="folder for {slide}.heatmap.png and {slide}.top{k}.png")
    p.add_argument("--top-k", type=int, default=8, help="patches in the top-k strip")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--mpp-fallback", type=float)
    p.set_defaults(func=cmd_heatmaps)

    p = sub.add_parser("zeroshot", help="zero-shot slide scores from stored features and prompt embeddings")
    p.add_argument("--bags", required=True, help="bag index TSV (features/{encoder}/bags.tsv)")
    p.add_argument("--text", required=True, help="prompt embeddings h5 (text/{encoder}/{prompts}.h5)")
    p.add_argument("--top-k", type=int, default=50, help="tiles averaged per class (default 50)")
    p.add_argument("--magnification", type=int, choices=[5, 20], default=20)
    p.add_argument("--smoothing-k", type=int, default=0, help="k-NN spatial smoothing of tile logits (0 = off)")
    p.add_argument("--prompt-sets", type=int, default=0, help="MI-Zero sampled prompt sets to add to --sets-out")
    p.add_argument("--sets-out", help="also write every K and prompt set (long table, parquet)")
    p.add_argument("--out", required=True, help="predictions parquet: slide_id + prob_<class>")
    p.set_defaults(func=cmd_zeroshot)

    _add_hlip_commands(sub)

    from slidesnake.data.cli import add_commands

    add_commands(sub)
    from slidesnake.expression_cli import add_commands as add_expression_commands

    add_expression_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slidesnake`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except SlidesnakeError as exc:
        _one_line_error(exc)
        return exc.exit_code
    except (ValueError, KeyError, FileNotFoundError) as exc:
        # bad arguments caught by lower layers that predate the SlidesnakeError hierarchy
        _one_line_error(exc)
        return EXIT_CONFIG


def _one_line_error(exc: BaseException) -> None:
    """The error as one line on stderr (no traceback): the message names the file, key and fix."""
    text = " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split())
    print(f"slidesnake: error: {text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
