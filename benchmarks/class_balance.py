"""Class weighting on an imbalanced task: balanced accuracy with training.balance weight | sample | none.

Reads a finished cohort's features (default: the demo_hard run), keeps every patient of the first
class and only a share of the second (``--keep``), makes patient-level folds of that imbalanced
cohort and trains ABMIL on each fold three times, once per ``training.balance``. Prints per-patient
balanced accuracy, AUC and the share of test patients predicted as the minority class, mean over
folds. Exit 1 if weighting is a no-op (the defect issue 10 fixed: with one bag per step,
``cross_entropy(weight=...)`` renormalised the weight away, so weighted and unweighted runs predicted
the same): the weighted run must predict the minority class for more test patients than the
unweighted one, at no loss of balanced accuracy (tolerance 0.02).

    python benchmarks/class_balance.py [--cohort demo_hard --encoder demo-clip --keep 0.3]
"""

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from slidesnake.evaluate.metrics import evaluate_predictions
from slidesnake.features.bags import read_bag_index
from slidesnake.tasks import load_task_labels
from slidesnake.train.loop import TrainParams, train_fold
from slidesnake.train.splits import make_splits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", default="demo_hard")
    parser.add_argument("--encoder", default="demo-clip")
    parser.add_argument("--magnification", type=int, default=20)
    parser.add_argument("--keep", type=float, default=0.3, help="share of the second class's patients kept")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    root = Path("results") / args.cohort
    task, labels = load_task_labels("subtype", {"kind": "classification", "column": "label"}, str(root / "slides.tsv"))
    sheet = pd.read_csv(root / "slides.tsv", sep="\t", dtype=str)
    classes = sorted(sheet["label"].dropna().unique())
    rng = np.random.default_rng(0)
    minority = sorted(sheet.loc[sheet["label"] == classes[1], "case_id"].unique())
    kept = set(sheet.loc[sheet["label"] == classes[0], "case_id"]) | set(
        rng.choice(minority, max(args.folds, round(args.keep * len(minority))), replace=False)
    )
    sheet = sheet[sheet["case_id"].isin(kept)].reset_index(drop=True)
    labels = labels[labels["case_id"].isin(kept)].reset_index(drop=True)
    folds = make_splits(sheet, k=args.folds, val_fraction=0.2, seed=0)
    counts = sheet.drop_duplicates("case_id")["label"].value_counts().to_dict()
    print(f"{args.cohort}/{args.encoder} at {args.magnification}x: patients per class {counts}, {args.folds} folds")

    bags = read_bag_index(str(root / "features" / args.encoder / "bags.tsv"))
    features = bags.features(args.magnification)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for balance in ("weight", "sample", "none"):
            files = []
            for fold in range(args.folds):
                out = Path(tmp) / balance / f"fold{fold}"
                params = TrainParams(epochs=args.epochs, patience=10, lr=args.lr, balance=balance, seed=fold)
                train_fold(task, "abmil", features, labels, folds, fold, params, str(out))
                files.append(str(out / "predictions.parquet"))
            table = evaluate_predictions(task, files, n_bootstrap=200).set_index("fold")
            test = pd.concat(pd.read_parquet(f) for f in files)
            test = test[test["split"] == "test"].groupby("case_id")[f"prob_{classes[1]}"].mean()
            rows[balance] = {
                "balanced_accuracy": table.loc["mean", "balanced_accuracy"],
                "auc": table.loc["mean", "auc"],
                "predicted_minority_share": float((test > 0.5).mean()),
            }
    result = pd.DataFrame(rows).T
    print(result.round(3).to_string())
    gain = result.at["weight", "balanced_accuracy"] - result.at["none", "balanced_accuracy"]
    shift = result.at["weight", "predicted_minority_share"] - result.at["none", "predicted_minority_share"]
    share = counts[classes[1]] / sum(counts.values())
    print(f"weighting: balanced accuracy {gain:+.3f}, test patients called {classes[1]} {shift:+.3f} vs no weighting")
    print(f"(true {classes[1]} share of the patients: {share:.3f})")
    return 0 if shift > 0 and gain >= -0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
