"""Parse-time checks: misspelt keys, encoders, models and task columns stop `snakemake -n` with one line
naming the key and the allowed values; every config key an error message names exists in the schema."""

from __future__ import annotations

import ast
import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_snakemake

from slidesnake.config import SCHEMA_PATH, ConfigError, validate_config
from slidesnake.naming import ENCODER_NAMES, HF_HUB_PREFIX, LOCAL_DIR_PREFIX, MODEL_NAMES
from slidesnake.validation import (
    ConfigNameError,
    check_encoder,
    check_model,
    check_names,
    check_text_models,
    hier_prompt_path,
)

SCHEMA = yaml.safe_load(Path(SCHEMA_PATH).read_text())


def test_name_lists_match_the_registries() -> None:
    """The torch-free lists the Snakefile checks against are the registries themselves."""
    from slidesnake.features import encoders
    from slidesnake.models import registry
    from slidesnake.naming import TEXT_MODEL_NAMES

    assert set(ENCODER_NAMES) == set(encoders.REGISTRY)
    assert set(MODEL_NAMES) == set(registry.names())
    text_models = {n for n, e in registry.entries().items() if {"text", "text_encoder"} & set(e.inputs)}
    assert set(TEXT_MODEL_NAMES) == text_models == {"hivemil", "vilamil"}
    assert (HF_HUB_PREFIX, LOCAL_DIR_PREFIX) == (encoders.HF_HUB_PREFIX, encoders.LOCAL_DIR_PREFIX)


def test_validation_does_not_import_torch() -> None:
    code = "import sys, slidesnake.validation, slidesnake.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["tiny-clip", "CONCH", "hf-hub:MahmoodLab/UNI", "ViT-B-32:openai", "conch:/x.bin"])
def test_encoder_names_accepted(name: str) -> None:
    check_encoder(name)


def test_encoder_paths(tmp_path: Path) -> None:
    check_encoder(str(tmp_path))
    check_encoder(f"local-dir:{tmp_path}")
    with pytest.raises(ConfigNameError, match="features.encoders.*existing path"):
        check_encoder(str(tmp_path / "missing"))


def test_misspelt_encoder_and_model_name_key_and_allowed() -> None:
    with pytest.raises(ConfigNameError) as err:
        check_encoder("quiltnet-b32")
    assert "'features.encoders'" in str(err.value) and "did you mean 'quiltnet-b-32'" in str(err.value)
    assert "tiny-clip" in str(err.value)
    with pytest.raises(ConfigNameError, match=r"'training.models'.*'abmill'.*did you mean 'abmil'.*allowed values"):
        check_model("abmill")


@pytest.mark.parametrize("source", ["demo", "demo_visium"])
def test_demo_clip_allowed_for_the_synthetic_sources(source: str) -> None:
    """demo-clip's corpus comes from the demo generator, so both synthetic cohorts may pretrain and use it."""
    check_names(validate_config({"cohort": "x", "source": source, "features": {"encoders": ["demo-clip"]}}))


@pytest.mark.parametrize("source", ["sheet", "gdc", "visium"])
def test_demo_clip_refused_for_real_cohorts(source: str) -> None:
    config = validate_config({"cohort": "x", "source": source, "features": {"encoders": ["tiny-clip", "demo-clip"]}})
    with pytest.raises(ConfigNameError, match=rf"'features.encoders'.*'demo-clip'.*not source: {source}.*quiltnet"):
        check_names(config)


def test_task_columns_checked_against_known_tables() -> None:
    config = validate_config({"cohort": "x", "tasks": {"t": {"kind": "classification", "column": "labell"}}})
    with pytest.raises(ConfigNameError, match=r"'tasks.t.column'.*'labell'.*did you mean 'label'"):
        check_names(config, ["slide_id", "case_id", "path", "label"])
    check_names(config, None)  # sheet not known at parse time (GDC before its query): left to the job
    surv = validate_config(
        {"cohort": "x", "tasks": {"s": {"kind": "survival", "source": "clinical", "event": "os_evt"}}}
    )
    tables = {"clinical": ("results/x/clinical.parquet", ["case_id", "os_days", "os_event"])}
    with pytest.raises(ConfigNameError, match=r"'tasks.s.event'.*clinical.parquet.*did you mean 'os_event'"):
        check_names(surv, ["slide_id"], tables)


def test_text_models_need_a_text_tower_and_a_prompt_file_with_every_class(tmp_path: Path) -> None:
    def config(encoder="demo-clip", models=("hivemil",), **task):
        task = {"kind": "classification", "column": "label", **task}
        cfg = {"cohort": "x", "tasks": {"t": task}, "training": {"models": list(models), "encoder": encoder}}
        return validate_config(cfg)

    classes = {"t": ["solid", "glandular"]}.get
    check_text_models(config(hier_prompts="demo_hier"), classes, REPO)
    check_text_models(config("uni", models=("abmil",)), classes, REPO)  # the MIL zoo needs neither
    assert hier_prompt_path("demo_hier", REPO) == REPO / "config/prompts/demo_hier.json"
    assert hier_prompt_path("my/p.json", REPO) == Path("my/p.json")
    assert config()["training"]["fewshot"] == {
        "models": ["hivemil", "vilamil"], "shots": 16, "repeats": 5, "val_fraction": 0.3, "test_fraction": 0.3,
        "curve": {"shots": [], "models": ["abmil", "meanpool", "vilamil", "hivemil"]},  # no curve unless N are given
    }  # fmt: skip
    # the curve's text models need the same: a misspelt curve model or a missing prompt file fails at parse time
    curve = config(models=("abmil",))
    curve["training"]["fewshot"]["curve"]["shots"] = [1, 2]
    with pytest.raises(ConfigNameError, match=r"'tasks.t.hier_prompts' is not set.*training.fewshot.curve.models"):
        check_text_models(curve, classes, REPO)
    with pytest.raises(ConfigNameError, match=r"'training.encoder' is 'uni', an image-only encoder"):
        check_text_models(config("uni", hier_prompts="demo_hier"), classes, REPO)
    with pytest.raises(ConfigNameError, match=r"'tasks.t.hier_prompts' is not set.*\['hivemil'\]"):
        check_text_models(config(models=("abmil", "hivemil")), classes, REPO)
    with pytest.raises(
        ConfigNameError, match=r"'tasks.t.hier_prompts'.*tcga_nsclc_hier.json.*\['solid', 'glandular'\]"
    ):
        check_text_models(config(hier_prompts="tcga_nsclc_hier"), classes, REPO)
    with pytest.raises(ConfigNameError, match=r"'tasks.t.hier_prompts'.*not found"):
        check_text_models(config(hier_prompts=str(tmp_path / "none.json")), classes, REPO)
    surv = validate_config(
        {"cohort": "x", "tasks": {"s": {"kind": "survival", "source": "clinical"}}, "training": {"models": ["vilamil"]}}
    )
    with pytest.raises(ConfigNameError, match=r"'tasks.s.kind' is 'survival'.*classify"):
        check_text_models(surv, classes, REPO)


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("featurs={encoders: [tiny-clip]}", "unknown config key 'featurs'", "allowed keys at the top level: cohort"),
        ("features={encoder: [tiny-clip]}", "unknown config key 'features.encoder'", "allowed keys under 'features'"),
        ("training={models: [abmill]}", "config key 'training.models.0' is 'abmill'", "allowed values: abmil"),
        ("features={encoders: [unii]}", "config key 'features.encoders': encoder 'unii'", "registry names: "),
        ("tasks={subtype: {kind: classification, column: labell}}", "'tasks.subtype.column'", "its columns: label"),
    ],
)
def test_typos_fail_the_dry_run_in_one_line(tmp_path: Path, override: str, key: str, allowed: str) -> None:
    proc = run_snakemake(tmp_path, "-n", "--config", override, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [line for line in text.splitlines() if key in line]
    assert len(lines) == 1 and allowed in lines[0], text[-3000:]
    assert "additionalProperties" not in text and len(text.splitlines()) < 40  # no schema dump
    assert not (tmp_path / "results").exists()


def test_schema_errors_are_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({"cohort": "x", "segmentation": {"preset": "tcgaa"}})
    assert str(err.value) == "config key 'segmentation.preset' is 'tcgaa'; allowed values: default, tcga, biopsy"


# --- item 6: every config key an error message names is a real key -------------------------------------------

SOURCES = sorted([*(REPO / "slidesnake").rglob("*.py"), *(REPO / "rules").glob("*.smk"), REPO / "Snakefile"])
LOG_CALLS = {"error", "warning", "exception", "critical", "fatal"}
FILE_SUFFIXES = {"h5", "tsv", "csv", "json", "parquet", "png", "jpg", "yaml", "pt", "svs", "txt", "log", "h5ad", "py"}


def _message_texts(path: Path) -> list[str]:
    """Texts of raised exceptions and logged errors/warnings; f-string fields become '*'."""
    source = path.read_text()
    if path.suffix != ".py":  # Snakemake files: every string literal (they are few)
        return re.findall(r'f?"([^"\n]*)"', source)

    def text_of(node: ast.AST) -> list[str]:
        out = []
        for sub in ast.walk(node):
            if isinstance(sub, ast.JoinedStr):
                out.append("".join(v.value if isinstance(v, ast.Constant) else "*" for v in sub.values))
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                out.append(sub.value)
        return out

    texts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            texts += text_of(node.exc)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) in LOG_CALLS:
            texts += text_of(node)
    # adjacent literals are one message: join them so a key split over two lines is still seen
    return [" ".join(texts)] if texts else []


def _schema_has(path: list[str]) -> bool:
    node = SCHEMA
    for part in path:
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif part == "*" or isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"] if isinstance(node.get("additionalProperties"), dict) else node
        else:
            return False
    return True


def named_keys(text: str) -> set[str]:
    """Config keys a message names: after 'config key', 'set X ... config', or a dotted path whose first
    part is (or nearly is) a top-level key."""
    top = list(SCHEMA["properties"])
    keys = set(re.findall(r"config keys? [`'\"(]*([A-Za-z_*][\w.*]*)", text))
    if "config" in text:
        keys |= set(re.findall(r"\bset [`']?([a-z_][\w.]*)[`']? (?:for|in)\b", text))
    for dotted in re.findall(r"(?<![\w./:-])([a-z][a-z0-9_]*(?:\.(?:[a-z0-9_]+|\*))+)(?![\w/(-])", text):
        parts = dotted.split(".")
        if parts[-1] in FILE_SUFFIXES:
            continue
        if parts[0] in top or difflib.get_close_matches(parts[0], top, n=1, cutoff=0.75):
            keys.add(dotted)
    return {key.rstrip(".") for key in keys}


def test_key_finder_catches_the_known_wrong_advice() -> None:
    assert named_keys("unknown MIL model 'x' (config key train.models); choose one") == {"train.models"}
    assert named_keys("no resolution; set fallback_mpp for this cohort in the config") == {"fallback_mpp"}
    assert not _schema_has(["train", "models"]) and not _schema_has(["fallback_mpp"])
    assert _schema_has(["training", "models"]) and _schema_has(["tasks", "*", "column"])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_error_messages_name_real_config_keys(path: Path) -> None:
    wrong = sorted(key for text in _message_texts(path) for key in named_keys(text) if not _schema_has(key.split(".")))
    assert not wrong, f"{path.relative_to(REPO)}: error messages name config keys the schema lacks: {wrong}"


def test_image_only_names_cover_the_registry() -> None:
    from slidesnake.features.encoders import REGISTRY
    from slidesnake.naming import IMAGE_ONLY_ENCODERS

    assert {name for name, spec in REGISTRY.items() if not spec.has_text_tower} <= IMAGE_ONLY_ENCODERS
    assert not IMAGE_ONLY_ENCODERS & {name for name, spec in REGISTRY.items() if spec.has_text_tower}
