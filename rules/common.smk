"""Sheet loading, wildcard constraints and input functions shared by every rule file."""

import os
from functools import partial
from types import SimpleNamespace

import yaml

from slidesnake.naming import DEMO_ENCODER_SOURCES, TEXT_MODEL_NAMES, encoder_slug
from slidesnake.sheet import SLIDE_ID_PATTERN, read_sheet
from slidesnake.validation import check_names, check_text_models, curve_models, hier_prompt_path, parquet_columns


def sorted_keys(value):
    """A dict param with its keys sorted (recursively): Snakemake compares params by their text, so
    reordering keys in a config file must not rerun jobs."""
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(item) for item in value]
    return value


COHORT = config["cohort"]
SOURCE = config["source"]
MAGS = config["patching"]["magnifications"]
ENCODERS = {encoder_slug(name): name for name in config["features"]["encoders"]}
TRAIN = config["training"]
TRAIN_ENCODER = encoder_slug(TRAIN["encoder"])
TASKS = config["tasks"]
FEWSHOT = TRAIN["fewshot"]
# task keys that name files (inputs of the jobs that read them), not tunables: left out of the task param
TASK_FILE_KEYS = ("hier_prompts",)


def registered_models():
    """The registered model names as the packaged schema lists them (tests/test_registry.py keeps the enum
    equal to slidesnake/models/registry.py); read from the YAML so that parsing does not import torch."""
    with open(os.path.join(workflow.basedir, "slidesnake", "schema.yaml")) as f:
        schema = yaml.safe_load(f)
    return schema["properties"]["training"]["properties"]["models"]["items"]["enum"]


FEATURES = config["features"]
HIERARCHY = 5 in MAGS and 20 in MAGS


wildcard_constraints:
    cohort=COHORT,
    slide_id=SLIDE_ID_PATTERN,
    mag="5|20",
    encoder="|".join(ENCODERS) or "NONE",
    task="|".join(TASKS) or "NONE",
    model="|".join(registered_models()),
    fold=r"\d+",
    shots=r"\d+",


def slides_dir():
    return f"resources/slides/{COHORT}"


def sheet_file():
    """Slide sheet path: written by rule demo_cohort or the GDC query, or given in the config."""
    if SOURCE == "sheet":
        if not config.get("sheet"):
            raise ValueError("config key 'sheet' must name a slide sheet TSV when source is 'sheet'")
        return config["sheet"]
    return f"results/{COHORT}/slides.tsv"


def _static_sheet():
    """The sheet known at parse time (demo, sheet); None for GDC cohorts (known after the query)."""
    if SOURCE == "demo":
        from slidesnake.data.demo import DemoConfig, demo_sheet

        return demo_sheet(DemoConfig(**config["demo"]), slides_dir())
    if SOURCE == "sheet":
        return read_sheet(sheet_file())
    return None


SHEET = _static_sheet()
SHEET_PATHS = dict(zip(SHEET["slide_id"], SHEET["path"])) if SHEET is not None else {}


def _label_table_columns():
    """Columns of the clinical and mutation tables where they already exist (None: not known yet)."""
    return {
        source: (f"results/{COHORT}/{source}.parquet", parquet_columns(f"results/{COHORT}/{source}.parquet"))
        for source in ("clinical", "mutations")
    }


# Misspelt encoders, models and task columns stop the parse (snakemake -n) with one line naming the key.
check_names(config, SHEET.columns if SHEET is not None else None, _label_table_columns())
if TRAIN_ENCODER not in ENCODERS:
    raise ValueError(
        f"config key 'training.encoder' is {TRAIN['encoder']!r}, which is not among 'features.encoders' "
        f"{list(ENCODERS.values())}: training reads the features of one of those encoders"
    )


def cohort_sheet():
    """The slide sheet; for GDC cohorts it exists only after the query checkpoint has run."""
    if SHEET is not None:
        return SHEET
    return read_sheet(checkpoints.gdc_query.get(cohort=COHORT).output.sheet)


def slide_ids(wildcards=None):
    return cohort_sheet()["slide_id"].tolist()


def slide_file(slide_id):
    if SOURCE == "sheet":
        return SHEET_PATHS[slide_id]
    return f"{slides_dir()}/{slide_id}.svs"


def slide_path(wildcards):
    return slide_file(wildcards.slide_id)


def slide_files(pattern, **fixed):
    """A per-slide path pattern expanded over the cohort's slides (after the checkpoint, for GDC)."""
    return expand(pattern, cohort=COHORT, slide_id=slide_ids(), **fixed)


def per_slide(pattern, **fixed):
    """:func:`slide_files` as an input function."""

    def _inputs(wildcards):
        return slide_files(pattern, **fixed)

    return _inputs


def encoder_name(wildcards):
    """The encoder as the user named it (registry name, hf-hub id or path) for a folder slug."""
    return ENCODERS[wildcards.encoder]


def prompt_file(wildcards):
    return os.path.join(workflow.basedir, "config", "prompts", f"{wildcards.prompts}.json")


def task_config(wildcards):
    """The task's settings as a param; the files it names (its prompt file) are inputs instead."""
    return sorted_keys({k: v for k, v in TASKS[wildcards.task].items() if k not in TASK_FILE_KEYS})


def label_tables(wildcards):
    """Clinical / mutation tables a task reads its labels from (none for sheet labels)."""
    source = TASKS[wildcards.task].get("source", "sheet")
    if source == "clinical":
        return {"clinical": f"results/{COHORT}/clinical.parquet"}
    if source == "mutations":
        return {"mutations": f"results/{COHORT}/mutations.parquet"}
    return {}


def bag_index(encoder):
    """The bag index of an encoder (slidesnake/features/bags.py): what training and heatmaps read."""
    return f"results/{COHORT}/features/{encoder}/bags.tsv"


def encoder_bags(wildcards):
    """Every slide's features (each magnification) and hierarchy file of one encoder."""
    files = {
        f"features_{mag}x": slide_files(
            "results/{cohort}/features/{encoder}/{mag}x/{slide_id}.h5", encoder=wildcards.encoder, mag=mag
        )
        for mag in MAGS
    }
    if HIERARCHY:
        files["hierarchy"] = slide_files(
            "results/{cohort}/features/{encoder}/hier_5x_20x/{slide_id}.h5", encoder=wildcards.encoder
        )
    return files


def split_inputs(wildcards):
    return {"sheet": sheet_file(), **label_tables(wildcards)}


TRAIN_PARAMS = {
    key: TRAIN[key]
    for key in sorted(
        ("epochs", "patience", "lr", "weight_decay", "dropout", "seed", "max_instances", "balance", "device")
    )
}


def train_params(wildcards):
    """The training parameters of one model: training.lr and training.accumulate unless
    training.lr_by_model / accumulate_by_model name the model (a params function, so changing one
    model's setting reruns only that model's jobs)."""
    return {
        **TRAIN_PARAMS,
        "lr": TRAIN["lr_by_model"].get(wildcards.model, TRAIN["lr"]),
        "accumulate": TRAIN["accumulate_by_model"].get(wildcards.model, TRAIN["accumulate"]),
    }


def is_fewshot(model):
    """Whether ``model`` trains on the few-shot splits (training.fewshot.models) rather than the k folds."""
    return model in FEWSHOT["models"]


def split_file(task, model):
    """The splits a model trains and is evaluated on: fewshot{N}.csv (fold = repeat) or folds.csv."""
    name = f"fewshot{FEWSHOT['shots']}" if is_fewshot(model) else "folds"
    return f"results/{COHORT}/splits/{task}/{name}.csv"


def model_folds(model):
    """The fold indices of a model's runs: one per few-shot repeat, or one per fold."""
    return range(FEWSHOT["repeats"] if is_fewshot(model) else TRAIN["folds"])


def hier_prompt_file(task):
    """The hierarchical prompt file of a task (tasks.<task>.hier_prompts), checked at parse time."""
    return str(hier_prompt_path(TASKS[task]["hier_prompts"], workflow.basedir))


def text_model_inputs(wildcards):
    """HiVE-MIL / ViLa-MIL: the task's prompt file and a pipeline-trained training encoder's files."""
    if wildcards.model not in TEXT_MODEL_NAMES:
        return {}
    return {"hier_prompts": hier_prompt_file(wildcards.task), "text_encoder": text_trained_encoder(wildcards)}


def train_text_encoder(wildcards):
    """What load_encoder is given for a text model's tower (the training encoder); empty for the MIL zoo."""
    return text_encoder_source(wildcards) if wildcards.model in TEXT_MODEL_NAMES else ""


def _first_stage(model):
    from slidesnake.models import registry  # imports torch: only when a train job is in the DAG

    return registry.get(model).first_stage


def _run_inputs(wildcards, splits, first_stage_run):
    """A training run's inputs: ``splits``, bag index, labels, a text model's prompt file and trained encoder,
    and a two-stage model's (registry first_stage) first-stage model.pt in ``first_stage_run(model)``."""
    inputs = {
        "folds": splits,
        "bags": bag_index(wildcards.encoder),
        **split_inputs(wildcards),
        **text_model_inputs(wildcards),
    }
    first_stage = _first_stage(wildcards.model)
    if first_stage:
        inputs["first_stage"] = f"{first_stage_run(first_stage)}/fold{wildcards.fold}/model.pt"
    return inputs


def train_inputs(wildcards):
    """Splits (folds.csv, or fewshot{N}.csv for training.fewshot.models), bag index, labels, and the
    first-stage and text inputs of :func:`_run_inputs`."""
    first_stage = _first_stage(wildcards.model)
    if first_stage and is_fewshot(first_stage) != is_fewshot(wildcards.model):
        raise ValueError(
            f"config key 'training.fewshot.models': {wildcards.model} starts from the same split's {first_stage}, so "
            f"list both or neither (a first stage trained on other splits could have seen this run's test slides)"
        )
    run = f"results/{COHORT}/models/{wildcards.task}/{{}}/{wildcards.encoder}"
    return _run_inputs(wildcards, split_file(wildcards.task, wildcards.model), run.format)


# ---- the few-shot curve (training.fewshot.curve): every curve model at every N, shared val/test per repeat ----

CURVE = FEWSHOT["curve"]
CURVE_MODELS = curve_models(config)
CURVE_TASKS = [t for t, cfg in TASKS.items() if cfg["kind"] == "classification"] if CURVE_MODELS else []
if CURVE_MODELS and not CURVE_TASKS:
    raise ValueError("config key 'training.fewshot.curve.shots' is set, but no task is a classification task")


def _curve_point(task, model, encoder, shots, stage):
    """``results/{cohort}/{stage}/{task}/{model}/{encoder}[/fewshot{shots}]``: a curve point's run folder
    (stage "models") or metrics folder (stage "eval"). The runs of training.models that already train on
    fewshot{shots}.csv (training.fewshot.models at training.fewshot.shots) are reused, not trained twice."""
    base = f"results/{COHORT}/{stage}/{task}/{model}/{encoder}"
    reused = model in TRAIN["models"] and is_fewshot(model) and int(shots) == FEWSHOT["shots"]
    return base if reused else f"{base}/fewshot{shots}"


def curve_run(task, model, encoder, shots):
    return _curve_point(task, model, encoder, shots, "models")


def curve_metrics(task, model, encoder, shots):
    return f"{_curve_point(task, model, encoder, shots, 'eval')}/metrics.csv"


def fewshot_train_inputs(wildcards):
    """A curve run's inputs: fewshot{shots}.csv, and a two-stage model's first stage from the same N's runs."""
    splits = f"results/{COHORT}/splits/{wildcards.task}/fewshot{wildcards.shots}.csv"
    run = partial(curve_run, wildcards.task, encoder=wildcards.encoder, shots=wildcards.shots)
    return _run_inputs(wildcards, splits, run)


def fewshot_fold_predictions(wildcards):
    run = curve_run(wildcards.task, wildcards.model, wildcards.encoder, wildcards.shots)
    return [f"{run}/fold{k}/predictions.parquet" for k in range(FEWSHOT["repeats"])]


def curve_zeroshot():
    """The zero-shot baseline of the curve: the training encoder's first prompt set, when it is scored."""
    if not (ZS_TASKS and TRAIN_ENCODER in ZS_ENCODERS):
        return None
    return f"zeroshot-{ZS['prompts'][0]}"


def fewshot_curve_inputs(wildcards):
    shots = sorted(CURVE["shots"])
    inputs = {
        "metrics": [curve_metrics(wildcards.task, m, TRAIN_ENCODER, n) for m in CURVE_MODELS for n in shots],
        "splits": f"results/{COHORT}/splits/{wildcards.task}/fewshot{shots[0]}.csv",  # val/test: every N's
    }
    if curve_zeroshot():
        inputs["zeroshot"] = f"results/{COHORT}/models/{wildcards.task}/{curve_zeroshot()}/{TRAIN_ENCODER}/predictions.parquet"
    return inputs


def curve_targets():
    return [
        f"results/{COHORT}/eval/{task}/fewshot_curve.{ext}" for task in CURVE_TASKS for ext in ("csv", "png")
    ]


def fold_predictions(wildcards):
    return expand(
        "results/{cohort}/models/{task}/{model}/{encoder}/fold{fold}/predictions.parquet",
        cohort=COHORT,
        task=wildcards.task,
        model=wildcards.model,
        encoder=wildcards.encoder,
        fold=model_folds(wildcards.model),
    )


def heatmap_inputs(wildcards):
    """The fold's model, its splits and the bag index: the index names each test slide's features,
    hierarchy and slide file, which are all ancestors of the model already."""
    return {
        "model": f"results/{COHORT}/models/{wildcards.task}/{wildcards.model}/{wildcards.encoder}/fold{wildcards.fold}/model.pt",
        "folds": split_file(wildcards.task, wildcards.model),
        "bags": bag_index(wildcards.encoder),
        # a text model rebuilds its tower from the trained encoder model.pt names
        "text_encoder": text_trained_encoder(wildcards) if wildcards.model in TEXT_MODEL_NAMES else [],
    }


# models whose predictions split into per-description scores, tabled by the descriptions rule (HiVE-MIL)
DESCRIBED_MODELS = ("hivemil",)


def description_folds(wildcards):
    return list(model_folds(wildcards.model))


def description_inputs(wildcards):
    """Every run's model.pt of one task-model, its splits, the bag index and the text tower's files."""
    run = f"results/{COHORT}/models/{wildcards.task}/{wildcards.model}/{wildcards.encoder}"
    return {
        "models": [f"{run}/fold{k}/model.pt" for k in model_folds(wildcards.model)],
        "folds": split_file(wildcards.task, wildcards.model),
        "bags": bag_index(wildcards.encoder),
        "text_encoder": text_trained_encoder(wildcards),
    }


def all_targets(wildcards):
    if SOURCE in ("visium", "demo_visium"):  # expression cohorts: spots -> BLEEP/HECLIP/ridge -> metrics
        return expression_targets()
    targets = [f"results/{COHORT}/qc.parquet", f"results/{COHORT}/eval/summary.csv"]
    targets += slide_files("results/{cohort}/qc/{slide_id}.png")
    targets += [bag_index(encoder) for encoder in ENCODERS]
    evaluated = expand(
        "results/{cohort}/eval/{task}/{model}/{encoder}/curves.png",
        cohort=COHORT,
        task=list(TASKS),
        model=TRAIN["models"],
        encoder=TRAIN_ENCODER,
    )
    targets += evaluated
    targets += [
        f"results/{COHORT}/eval/{task}/{model}/{TRAIN_ENCODER}/descriptions.csv"
        for task in TASKS
        for model in TRAIN["models"]
        if model in DESCRIBED_MODELS
    ]
    if config["evaluation"]["heatmaps"]:
        targets += [
            f"results/{COHORT}/heatmaps/{task}/{model}/{TRAIN_ENCODER}/fold{fold}"
            for task in TASKS
            for model in TRAIN["models"]
            for fold in model_folds(model)
        ]
    targets += expand(
        "results/{cohort}/text/{encoder}/{prompts}.h5",
        cohort=COHORT,
        encoder=list(ENCODERS),
        prompts=config["features"]["prompts"],
    )
    return targets


def report_heatmap_inputs(wildcards):
    """Every fold's heatmap folder and predictions of one task-model (rule report_heatmaps)."""
    run = f"{wildcards.task}/{wildcards.model}/{wildcards.encoder}"
    return {
        "heatmaps": [f"results/{COHORT}/heatmaps/{run}/fold{f}" for f in model_folds(wildcards.model)],
        "predictions": fold_predictions(wildcards),
    }


def report_table_inputs(wildcards):
    """The cohort's comparison table, every metrics.csv and the QC table (rule report_tables)."""
    return {
        "summary": f"results/{COHORT}/eval/summary.csv",
        "qc": f"results/{COHORT}/qc.tsv",
        "metrics": [f"results/{COHORT}/eval/{t}/{m}/{e}/metrics.csv" for t, m, e in EVALUATED],
    }


def report_targets(wildcards):
    """What the report shows beyond the pipeline's own outputs: HTML tables, QC and heatmap JPEGs."""
    if SOURCE in ("visium", "demo_visium"):
        return []
    targets = [f"results/{COHORT}/report/summary.html", f"results/{COHORT}/report/qc"]
    if config["evaluation"]["heatmaps"] and config["report"]["heatmaps"] != "none":
        targets += expand(
            "results/{cohort}/report/heatmaps/{task}/{model}/{encoder}",
            cohort=COHORT,
            task=list(TASKS),
            model=TRAIN["models"],
            encoder=TRAIN_ENCODER,
        )
    return targets


# ---- spatial expression (rules/expression.smk) -----------------------------------------------------

EXPRESSION = config.get("expression", {})


def visium_samples():
    """Section names: the synthetic sections (demo_visium) or the cohort's GEO / spatialLIBD samples."""
    if SOURCE == "demo_visium":
        from slidesnake.data.demo_visium import DemoVisiumConfig, section_ids

        return section_ids(DemoVisiumConfig(**config.get("demo_visium", {})))
    return list(config.get("geo", {}).get("samples", []))


VISIUM_SAMPLES = visium_samples() if SOURCE in ("visium", "demo_visium") else []


def visium_source(wildcards):
    """The folder a section's files (and its full-resolution image) come from."""
    if SOURCE == "demo_visium":
        return f"resources/visium/{COHORT}/{wildcards.sample}"
    return f"resources/geo/{config['geo']['series']}"


def expression_tuned():
    return EXPRESSION.get("tune", "frozen") != "frozen"


def expression_fold_inputs(wildcards):
    """Every section's AnnData and spots; features of the fold's encoder (and tiles when tuning)."""
    files = {
        "h5ad": expand("results/{cohort}/visium/{sample}.h5ad", cohort=COHORT, sample=VISIUM_SAMPLES),
        "spots": expand("results/{cohort}/patches/spots/{sample}.h5", cohort=COHORT, sample=VISIUM_SAMPLES),
        "features": expand(
            "results/{cohort}/features/{encoder}/spots/{sample}.h5",
            cohort=COHORT,
            encoder=wildcards.encoder,
            sample=VISIUM_SAMPLES,
        ),
        "genes": f"results/{COHORT}/expression/genes/fold{wildcards.fold}.tsv",
    }
    if expression_tuned() and wildcards.model != "ridge":
        files["tiles"] = expand("results/{cohort}/tiles/spots/{sample}.h5", cohort=COHORT, sample=VISIUM_SAMPLES)
        files["trained"] = text_trained_encoder(wildcards)
    return files


def expression_metric_files(wildcards=None):
    return expand(
        "results/{cohort}/eval/expression/{model}/{encoder}/fold{fold}/metrics.csv",
        cohort=COHORT,
        model=EXPRESSION.get("models", []),
        encoder=list(ENCODERS),
        fold=range(len(VISIUM_SAMPLES)),
    )


def expression_fold_predictions(wildcards):
    return {
        "measured": expand(
            "results/{cohort}/expression/{model}/{encoder}/fold{fold}/measured.h5ad",
            cohort=COHORT,
            model=EXPRESSION["models"][0],
            encoder=wildcards.encoder,
            fold=wildcards.fold,
        ),
        "predictions": expand(
            "results/{cohort}/expression/{model}/{encoder}/fold{fold}/predictions.h5ad",
            cohort=COHORT,
            model=EXPRESSION["models"],
            encoder=wildcards.encoder,
            fold=wildcards.fold,
        ),
    }


def expression_targets():
    targets = [f"results/{COHORT}/eval/expression/summary.csv"]
    targets += expand(
        "results/{cohort}/eval/expression/spatial/{encoder}/fold{fold}.png",
        cohort=COHORT,
        encoder=list(ENCODERS),
        fold=range(len(VISIUM_SAMPLES)),
    )
    return targets


# ---- vision-language (issue 12): pipeline-trained encoders, zero-shot targets ------------------------

VL = config["vl"]
ZS = VL["zeroshot"]
CPLIP = VL["cplip"]
# Encoders the pipeline trains itself: name -> folder. demo-clip needs the demo generator (its corpus), so
# only the synthetic sources (the demo, the synthetic Visium demo) have it.
PIPELINE_ENCODERS = {}
if SOURCE in DEMO_ENCODER_SOURCES:
    PIPELINE_ENCODERS["demo-clip"] = f"results/{COHORT}/encoders/demo-clip"
CPLIP_NAME = f"{encoder_slug(CPLIP['base'])}-cplip"
if CPLIP["enabled"]:
    PIPELINE_ENCODERS[CPLIP_NAME] = f"results/{COHORT}/encoders/{CPLIP_NAME}"
ENCODER_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "training.json")


def encoder_source(name):
    """What load_encoder is given for a configured encoder: a pipeline-trained one's folder, else the name."""
    return PIPELINE_ENCODERS.get(name, name)


def encoder_sources(wildcards=None):
    return [encoder_source(name) for name in ENCODERS.values()]


def trained_encoder_files(names):
    """The files of the pipeline-trained encoders among ``names``: file inputs of every job using them."""
    return [f"{PIPELINE_ENCODERS[n]}/{f}" for n in names if n in PIPELINE_ENCODERS for f in ENCODER_FILES]


def features_trained_encoders(wildcards):
    return trained_encoder_files(ENCODERS.values())


def text_trained_encoder(wildcards):
    return trained_encoder_files([ENCODERS[wildcards.encoder]])


def text_encoder_source(wildcards):
    return encoder_source(ENCODERS[wildcards.encoder])


def _task_classes(task):
    """A classification task's classes when known before any job (configured, or the static sheet's labels)."""
    cfg = TASKS[task]
    if cfg.get("classes"):
        return list(cfg["classes"])
    if SHEET is not None and cfg.get("source", "sheet") == "sheet" and cfg.get("column") in SHEET:
        return sorted(label for label in SHEET[cfg["column"]].unique() if label)
    return None


ZS_TASKS = [t for t, cfg in TASKS.items() if cfg["kind"] == "classification"] if ZS["prompts"] else []
ZS_ENCODERS = [encoder_slug(e) for e in (ZS["encoders"] if ZS["encoders"] is not None else ENCODERS.values())]


def _check_vl_config():
    """Zero-shot and CPLIP settings that cannot work fail here, before any job (issue 12 bad input)."""
    from slidesnake.models.vl.prompts import check_class_prompts, read_prompt_dictionary
    from slidesnake.models.vl.zeroshot import check_text_tower

    for name in ZS["encoders"] or []:
        check_text_tower(name)
        if encoder_slug(name) not in ENCODERS:
            raise ValueError(
                f"config key 'vl.zeroshot.encoders' names {name!r}, which is not among 'features.encoders' "
                f"{list(ENCODERS.values())}: zero-shot scores the stored features of one of those"
            )
    if ZS["prompts"]:
        for name in ENCODERS.values():
            if ZS["encoders"] is None:
                check_text_tower(name)
        for task in ZS_TASKS:
            for prompts in ZS["prompts"]:
                path = os.path.join(workflow.basedir, "config", "prompts", f"{prompts}.json")
                check_class_prompts(path, _task_classes(task))
    if CPLIP["enabled"]:
        check_text_tower(CPLIP["base"])
        if not ZS_TASKS:
            raise ValueError("config key 'vl.cplip.enabled' is true but no classification task has zero-shot prompts")
        task = CPLIP["task"] or ZS_TASKS[0]
        if task not in ZS_TASKS:
            raise ValueError(f"config key 'vl.cplip.task' is {task!r}; classification tasks: {ZS_TASKS}")
        path = os.path.join(workflow.basedir, "config", "prompts", f"{CPLIP['dictionary']}.json")
        read_prompt_dictionary(path, _task_classes(task))
        if CPLIP_NAME not in ENCODERS:
            raise ValueError(
                f"config key 'vl.cplip.enabled' is true but 'features.encoders' {list(ENCODERS.values())} lacks "
                f"{CPLIP_NAME!r}: add it there, so its features are extracted and its zero-shot scored next to {CPLIP['base']!r}"
            )
        if CPLIP["fold"] >= TRAIN["folds"]:
            raise ValueError(
                f"config key 'vl.cplip.fold' is {CPLIP['fold']}; 'training.folds' is {TRAIN['folds']}, so folds are 0..{TRAIN['folds'] - 1}"
            )


_check_vl_config()
# HiVE-MIL / ViLa-MIL: a text-tower training encoder and a valid prompt file with every class, per task
check_text_models(config, _task_classes, workflow.basedir)
CPLIP_TASK = (CPLIP["task"] or (ZS_TASKS[0] if ZS_TASKS else None)) if CPLIP["enabled"] else None


def zeroshot_inputs(wildcards):
    return {
        "bags": bag_index(wildcards.encoder),
        "text": f"results/{COHORT}/text/{wildcards.encoder}/{wildcards.prompts}.h5",
        "folds": f"results/{COHORT}/splits/{wildcards.task}/folds.csv",
        **split_inputs(wildcards),
    }


def zeroshot_only_fold(wildcards):
    """The CPLIP-aligned encoder is scored on its fold's test patients only (the others trained or
    early-stopped it); every other encoder on every slide, each in its test fold."""
    return CPLIP["fold"] if CPLIP["enabled"] and wildcards.encoder == CPLIP_NAME else None


def zeroshot_tile_inputs(wildcards):
    return {
        "corpus": f"results/{COHORT}/captions/test.h5",
        "text": f"results/{COHORT}/text/{wildcards.encoder}/{wildcards.prompts}.h5",
        "trained": text_trained_encoder(wildcards),
    }


def cplip_inputs(wildcards):
    return {
        "dictionary": os.path.join(workflow.basedir, "config", "prompts", f"{CPLIP['dictionary']}.json"),
        "folds": f"results/{COHORT}/splits/{CPLIP_TASK}/folds.csv",
        # coords and slides, not the base's features: the aligned encoder's features come from the same
        # per-slide features job as the base's, so depending on those would be a cycle
        "coords": slide_files("results/{cohort}/patches/{mag}x/{slide_id}.h5", mag=CPLIP["magnification"]),
        "slides": [slide_file(s) for s in slide_ids()],
        "trained": trained_encoder_files([CPLIP["base"]]),
        "sheet": sheet_file(),
        **label_tables(SimpleNamespace(task=CPLIP_TASK)),
    }


def vl_targets():
    """Zero-shot metrics (slide and, on the demo, tile level) of every task x encoder x prompts, and the
    VL comparison table."""
    if not ZS_TASKS:
        return []
    targets = expand(
        "results/{cohort}/eval/{task}/zeroshot-{prompts}/{encoder}/metrics.csv",
        cohort=COHORT,
        task=ZS_TASKS,
        prompts=ZS["prompts"],
        encoder=ZS_ENCODERS,
    )
    targets.append(f"results/{COHORT}/eval/vl_comparison.csv")
    return targets


def vl_comparison_inputs(wildcards):
    rows = [(t, p, e) for t in ZS_TASKS for p in ZS["prompts"] for e in ZS_ENCODERS]
    files = {
        "metrics": [f"results/{COHORT}/eval/{t}/zeroshot-{p}/{e}/metrics.csv" for t, p, e in rows],
        "sweeps": [f"results/{COHORT}/eval/{t}/zeroshot-{p}/{e}/sweep.csv" for t, p, e in rows],
        "predictions": [f"results/{COHORT}/models/{t}/zeroshot-{p}/{e}/predictions.parquet" for t, p, e in rows],
        "supervised": [
            f"results/{COHORT}/models/{t}/{m}/{TRAIN_ENCODER}/fold{k}/predictions.parquet"
            for t in ZS_TASKS
            for m in TRAIN["models"]
            for k in model_folds(m)
        ],
    }
    if SOURCE == "demo":
        files["tiles"] = [f"results/{COHORT}/eval/{t}/zeroshot-{p}/{e}/tiles.csv" for t, p, e in rows]
    return files


# ---- HLIP (issue 14): clinical-caption tuning and retrieval evaluation ---------------------------------

HLIP = VL["hlip"]
HLIP_NAME = f"hlip-{encoder_slug(HLIP['base'])}"
HLIP_TASK = (HLIP["task"] or next(iter(TASKS), None)) if HLIP["enabled"] else None
HLIP_ENCODERS = [encoder_slug(HLIP["base"]), HLIP_NAME] if HLIP["enabled"] else []
if HLIP["enabled"]:
    PIPELINE_ENCODERS[HLIP_NAME] = f"results/{COHORT}/encoders/{HLIP_NAME}"
    for _name in HLIP_ENCODERS:
        if _name not in ENCODERS:
            raise ValueError(
                f"config key 'vl.hlip.enabled' is true, so 'features.encoders' must list {_name!r} (the base and the "
                f"tuned encoder are both evaluated from their features); it lists {list(ENCODERS.values())}"
            )
    if HLIP_TASK is None:
        raise ValueError("config key 'vl.hlip.enabled' is true but no task is configured: HLIP uses a task's folds")
    if HLIP["task"] and HLIP["task"] not in TASKS:
        raise ValueError(f"config key 'vl.hlip.task' is {HLIP['task']!r}; configured tasks: {list(TASKS)}")
    if HLIP["fold"] >= TRAIN["folds"]:
        raise ValueError(f"config key 'vl.hlip.fold' is {HLIP['fold']}, but training.folds is {TRAIN['folds']}")
    from slidesnake.data.captions import field_order, survival_bins

    field_order(HLIP["fields"])
    survival_bins(HLIP["survival_bins"])
HLIP_PROMPTS = HLIP["prompts"] or (ZS["prompts"][0] if ZS["prompts"] else None)
HLIP_CLASSIFICATION = HLIP_TASK is not None and TASKS[HLIP_TASK]["kind"] == "classification"


def hlip_tune_inputs(wildcards):
    return {
        "tiles": slide_files(f"results/{COHORT}/tiles/{HLIP['magnification']}x/{{slide_id}}.h5"),
        "captions": f"results/{COHORT}/captions/clinical.parquet",
        "folds": f"results/{COHORT}/splits/{HLIP_TASK}/folds.csv",
        "sheet": sheet_file(),
        "trained": trained_encoder_files([HLIP["base"]]),
    }


def retrieval_inputs(wildcards):
    files = {
        "features": slide_files(f"results/{COHORT}/features/{wildcards.encoder}/{HLIP['magnification']}x/{{slide_id}}.h5"),
        "captions": f"results/{COHORT}/captions/clinical.parquet",
        "clinical": f"results/{COHORT}/clinical.parquet",
        "folds": f"results/{COHORT}/splits/{HLIP_TASK}/folds.csv",
        "sheet": sheet_file(),
        "trained": text_trained_encoder(wildcards),
    }
    if HLIP_PROMPTS and HLIP_CLASSIFICATION:
        files["text"] = f"results/{COHORT}/text/{wildcards.encoder}/{HLIP_PROMPTS}.h5"
    return files


def hlip_targets():
    """Retrieval metrics of the base and the tuned encoder, and their side-by-side table."""
    if not HLIP["enabled"]:
        return []
    targets = [f"results/{COHORT}/eval/retrieval/{e}/metrics.csv" for e in HLIP_ENCODERS]
    return targets + [f"results/{COHORT}/eval/retrieval/comparison.csv"]
