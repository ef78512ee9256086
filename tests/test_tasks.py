"""Tasks from config and their label tables (sheet, TMB threshold, mutations, survival)."""

import numpy as np
import pandas as pd
import pytest

from slidesnake.tasks import TaskConfigError, class_names, task_from_config, task_labels


@pytest.fixture
def sheet():
    return pd.DataFrame(
        {
            "slide_id": ["s1", "s2", "s3", "s4"],
            "case_id": ["c1", "c1", "c2", "c3"],
            "path": ["a", "b", "c", "d"],
            "label": ["LUSC", "LUSC", "LUAD", ""],
        }
    )


@pytest.fixture
def mutations(tmp_path):
    path = tmp_path / "mutations.parquet"
    pd.DataFrame(
        {
            "case_id": ["c1", "c2"],
            "tmb": [12.5, 3.0],
            "n_nonsilent": [400, 90],
            "TP53": np.array([1, 0], dtype=np.int8),
            "EGFR": np.array([0, 1], dtype=np.int8),
            "TP53__class": ["Missense_Mutation", ""],
        }
    ).to_parquet(path)
    return str(path)


def test_classification_labels_from_sheet_drop_blank_and_sort_classes(sheet):
    task = task_from_config("subtype", {"kind": "classification", "column": "label"})
    labels = task_labels(task, sheet)
    assert list(labels["slide_id"]) == ["s1", "s2", "s3"]
    assert list(labels["target"]) == [1, 1, 0]  # LUAD=0, LUSC=1
    assert class_names(task, labels) == ["LUAD", "LUSC"]


def test_tmb_threshold_and_multilabel_join_by_case(sheet, mutations):
    tmb = task_from_config("tmb", {"kind": "classification", "source": "mutations", "column": "tmb", "threshold": 10})
    labels = task_labels(tmb, sheet, mutations=mutations)
    assert tmb.classes == ("low", "high")
    assert dict(zip(labels["slide_id"], labels["label"])) == {"s1": "high", "s2": "high", "s3": "low"}
    assert list(labels["target"]) == [1, 1, 0]
    genes = task_from_config("mut", {"kind": "multilabel", "source": "mutations", "genes": ["TP53", "EGFR"]})
    labels = task_labels(genes, sheet, mutations=mutations)
    assert genes.target_columns == ["target_TP53", "target_EGFR"]
    assert labels[["target_TP53", "target_EGFR"]].to_numpy().tolist() == [[1, 0], [1, 0], [0, 1]]  # c3 unlabelled


def test_survival_labels(sheet, tmp_path):
    path = tmp_path / "clinical.parquet"
    pd.DataFrame({"case_id": ["c1", "c2", "c3"], "os_days": [100.0, None, 50.0], "os_event": [1, 0, 0]}).to_parquet(
        path
    )
    task = task_from_config("os", {"kind": "survival", "source": "clinical", "time": "os_days", "event": "os_event"})
    labels = task_labels(task, sheet, clinical=str(path))
    assert list(labels["slide_id"]) == ["s1", "s2", "s4"]
    assert list(labels["time"]) == [100.0, 100.0, 50.0] and list(labels["event"]) == [1, 1, 0]


def test_config_errors_name_the_key(sheet):
    with pytest.raises(TaskConfigError, match="tasks.x.kind"):
        task_from_config("x", {"kind": "regression"})
    with pytest.raises(TaskConfigError, match="genes"):
        task_from_config("x", {"kind": "multilabel", "source": "mutations"})
    bad = task_from_config("x", {"kind": "classification", "column": "label", "classes": ["LUAD"]})
    with pytest.raises(TaskConfigError, match="LUSC"):
        task_labels(bad, sheet)
