"""Prediction tasks (subtype, mutation, TMB, survival) and the per-slide label tables they need.

A task says what to predict and where the label lives (slide sheet, clinical or mutation table);
labels join slides to cases by ``case_id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from slidesnake.errors import ConfigError
from slidesnake.sheet import read_sheet

log = logging.getLogger(__name__)

KINDS = ("classification", "multilabel", "survival")
SOURCES = ("sheet", "clinical", "mutations")


class TaskConfigError(ConfigError):
    """A task entry in the config is inconsistent; the message names the task and key."""


@dataclass(frozen=True)
class Task:
    """One prediction task.

    classification: ``column`` from ``source`` gives the class (``classes`` fixes their order, else
    sorted); with ``threshold`` the column is numeric and split into ("low", "high") at >= threshold
    (TMB high/low, cutoff 10 mut/Mb on TCGA). multilabel: one binary target per gene in ``genes``.
    survival: ``time`` and ``event`` columns; discrete-time NLL over ``n_bins`` quantile bins.
    """

    name: str
    kind: str
    source: str = "sheet"
    column: str | None = None
    classes: tuple[str, ...] = ()
    genes: tuple[str, ...] = ()
    threshold: float | None = None
    time: str = "os_days"
    event: str = "os_event"
    n_bins: int = 4

    @property
    def target_columns(self) -> list[str]:
        """Columns of the label table (and predictions) that hold the ground truth."""
        if self.kind == "classification":
            return ["target"]
        if self.kind == "multilabel":
            return [f"target_{g}" for g in self.genes]
        return ["time", "event"]


def task_from_config(name: str, cfg: dict[str, Any]) -> Task:
    """Build a :class:`Task` from one ``tasks:`` entry of the config, failing fast on bad keys."""
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise TaskConfigError(f"tasks.{name}.kind is {kind!r}; use one of {KINDS}")
    source = cfg.get("source", "sheet")
    if source not in SOURCES:
        raise TaskConfigError(f"tasks.{name}.source is {source!r}; use one of {SOURCES}")
    threshold = cfg.get("threshold")
    classes = tuple(str(c) for c in cfg.get("classes", ()))
    if kind == "classification":
        if not cfg.get("column"):
            raise TaskConfigError(f"tasks.{name} (classification) needs a 'column' key")
        if threshold is not None and not classes:
            classes = ("low", "high")
    if kind == "multilabel" and not cfg.get("genes"):
        raise TaskConfigError(f"tasks.{name} (multilabel) needs a non-empty 'genes' list")
    if kind == "survival" and source == "sheet" and not cfg.get("time"):
        raise TaskConfigError(f"tasks.{name} (survival) needs source: clinical or explicit time/event columns")
    return Task(
        name=name,
        kind=kind,
        source=source,
        column=cfg.get("column"),
        classes=classes,
        genes=tuple(str(g) for g in cfg.get("genes", ())),
        threshold=None if threshold is None else float(threshold),
        time=cfg.get("time", "os_days"),
        event=cfg.get("event", "os_event"),
        n_bins=int(cfg.get("n_bins", 4)),
    )


def task_labels(
    task: Task, sheet: pd.DataFrame, clinical: str | None = None, mutations: str | None = None
) -> pd.DataFrame:
    """Per-slide targets for ``task``: slide_id, case_id + ``task.target_columns`` (+ ``label`` for classes).

    ``clinical``/``mutations`` are parquet paths, read only when the task's source needs them.
    Slides without a label are dropped with a logged count.
    """
    table = _source_table(task, sheet, clinical, mutations)
    base = sheet[["slide_id", "case_id"]].astype(str)
    if task.source == "sheet":
        merged = base.join(table.drop(columns=["slide_id", "case_id"], errors="ignore"))
    else:
        table = table.copy()
        table["case_id"] = table["case_id"].astype(str)
        merged = base.merge(table, on="case_id", how="left")
    out = _targets(task, merged)
    n_missing = len(base) - len(out)
    if n_missing:
        log.info("task %s: dropped %d of %d slides without a label", task.name, n_missing, len(base))
    return out.reset_index(drop=True)


def class_names(task: Task, labels: pd.DataFrame) -> list[str]:
    """The class order for a classification task: the configured one, else the sorted labels seen."""
    return list(task.classes) if task.classes else sorted(labels["label"].unique())


def _source_table(task: Task, sheet: pd.DataFrame, clinical: str | None, mutations: str | None) -> pd.DataFrame:
    if task.source == "sheet":
        return sheet
    path = clinical if task.source == "clinical" else mutations
    if path is None:
        raise TaskConfigError(f"task {task.name} reads labels from {task.source}.parquet but no such file was given")
    return pd.read_parquet(path)


def _require(task: Task, table: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TaskConfigError(
            f"task {task.name}: columns {missing} not in its {task.source} table; check tasks.{task.name}"
        )


def _targets(task: Task, merged: pd.DataFrame) -> pd.DataFrame:
    keep = merged[["slide_id", "case_id"]].copy()
    if task.kind == "classification":
        _require(task, merged, [task.column])
        raw = merged[task.column]
        if task.threshold is not None:
            values = pd.to_numeric(raw, errors="coerce")
            label = pd.Series(np.where(values >= task.threshold, task.classes[-1], task.classes[0]), index=merged.index)
            label[values.isna()] = None
        else:
            label = raw.where(raw.notna() & (raw.astype(str) != ""), None).astype(object)
            label = label.where(label.isna(), label.astype(str))
        keep["label"] = label
        keep = keep.dropna(subset=["label"])
        classes = list(task.classes) if task.classes else sorted(keep["label"].unique())
        unknown = sorted(set(keep["label"]) - set(classes))
        if unknown:
            raise TaskConfigError(f"task {task.name}: labels {unknown} are not in tasks.{task.name}.classes {classes}")
        keep["target"] = keep["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
        return keep
    if task.kind == "multilabel":
        _require(task, merged, list(task.genes))
        for gene in task.genes:
            keep[f"target_{gene}"] = pd.to_numeric(merged[gene], errors="coerce")
        keep = keep.dropna(subset=task.target_columns)
        return keep.astype({c: int for c in task.target_columns})
    _require(task, merged, [task.time, task.event])
    keep["time"] = pd.to_numeric(merged[task.time], errors="coerce").astype(float)
    keep["event"] = pd.to_numeric(merged[task.event], errors="coerce")
    keep = keep.dropna(subset=["time", "event"])
    return keep.astype({"event": int})


def load_task_labels(
    name: str, cfg: dict[str, Any], sheet_tsv: str, clinical: str | None = None, mutations: str | None = None
) -> tuple[Task, pd.DataFrame]:
    """The task of config entry ``tasks.<name>`` and its per-slide labels, read from the pipeline's files."""
    task = task_from_config(name, cfg)
    return task, task_labels(task, read_sheet(sheet_tsv), clinical=clinical, mutations=mutations)


def job_task_labels(job: Any, name: str | None = None) -> tuple[Task, pd.DataFrame]:
    """:func:`load_task_labels` for a Snakemake job: task ``name`` (default the ``task`` wildcard), its
    config from ``params.task``, the sheet and the optional clinical/mutation tables from its inputs."""
    return load_task_labels(
        name if name is not None else job.wildcards.task,
        job.params.task,
        job.input.sheet,
        clinical=job.input.get("clinical"),
        mutations=job.input.get("mutations"),
    )
