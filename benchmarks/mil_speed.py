"""Forward+backward time per MIL model on one 10,000-instance bag at D=512 (CPU), against torchmil.

Two tables. ``--against torchmil`` (default): our ABMIL, CLAM-SB, DTFD, DSMIL and TransMIL against
the reference library torchmil (installed for the benchmark only, not a dependency:
``pip install torchmil==1.0.2``), built with our layer sizes, on the same bag in the same process,
runs interleaved (ours, theirs, ours, ...) so a busy shared CPU slows both alike; prints seconds
(median of --repeats) and ours/theirs per model, and exits 1 if a ratio exceeds --fail-above.
``--zoo``: every model of ours, ratio to ABMIL and the peak RSS of a fresh process per model.
Run: .venv/bin/python benchmarks/mil_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from slidesnake.models.mil import MODELS, build_model


def _bag(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random features on a square 256-px grid, plus the 5x/20x hierarchy view of the same patches."""
    side = int(np.ceil(np.sqrt(n)))
    cells = np.stack(np.divmod(np.arange(n), side), axis=1)[:, ::-1]
    coords = torch.from_numpy(cells * 256).long()
    features = torch.randn(n, dim)
    parent = cells // 4
    keys, inverse = np.unique(parent, axis=0, return_inverse=True)
    slot = (cells[:, 1] % 4) * 4 + cells[:, 0] % 4
    hier = torch.zeros(len(keys), 16, dim)
    mask = torch.zeros(len(keys), 16, dtype=torch.bool)
    hier[inverse.reshape(-1), slot] = features
    mask[inverse.reshape(-1), slot] = True
    return features, coords, hier, mask


def _time_model(name: str, instances: int, dim: int, repeats: int, threads: int) -> tuple[float, float]:
    """(median seconds per forward+backward, peak RSS in MB) of ``name`` in this (fresh) process."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    features, coords, hier, mask = _bag(instances, dim)
    model = build_model(name, dim, 2).train()
    times = []
    for _ in range(repeats + 1):  # first run warms up
        start = time.perf_counter()
        if model.input_kind == "hierarchy":
            out = model(hier, mask=mask, label=torch.tensor([1]))
        else:
            out = model(features, coords=coords, label=torch.tensor([1]))
        loss = out.logits.sum()
        loss = loss + (out.aux_loss if out.aux_loss is not None else 0)
        loss = loss + (out.extra_logits.sum() if out.extra_logits is not None else 0)
        loss.backward()
        model.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ours_step(model: torch.nn.Module, features: torch.Tensor, coords: torch.Tensor) -> None:
    """One training step's compute as the loop does it: task loss + auxiliary branches, backward."""
    target = torch.tensor([1])
    out = model(features, coords=coords, label=target)
    loss = getattr(model, "bag_weight", 1.0) * F.cross_entropy(out.logits.view(1, -1), target)
    if out.extra_logits is not None:
        loss = loss + F.cross_entropy(
            out.extra_logits.view(-1, out.logits.numel()), target.expand(len(out.extra_logits))
        )
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()


def _theirs_step(model: torch.nn.Module, features: torch.Tensor) -> None:
    """torchmil's own training computation: ``compute_loss`` (bag loss + its auxiliary losses), backward."""
    _, losses = model.compute_loss(torch.tensor([1.0]), features.unsqueeze(0))
    sum(losses.values()).backward()


def _torchmil_models(dim: int) -> dict[str, torch.nn.Module]:
    """torchmil 1.0.2 models with our layer sizes: a Linear(D, 256)-ReLU-Dropout(0.25) instance
    embedding, attention dim 128, gated attention where ours is gated, 5 AFS pseudo-bags, 8 k-samples
    (CLAM's reference k), TransMIL width 512 with 8 heads and 256 landmarks."""
    import torchmil.models as tm

    def embedding() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.ReLU(), torch.nn.Dropout(0.25))

    return {
        "abmil": tm.ABMIL(in_shape=(dim,), att_dim=128, gated=True, feat_ext=embedding()),
        # its default SmoothTop1SVM instance loss (its BCE option fails on its own 2-logit instance heads)
        "clam_sb": tm.CLAM_SB(in_shape=(dim,), att_dim=128, gated=True, k_sample=8, feat_ext=embedding()),
        "dtfd": tm.DTFDMIL(in_shape=(dim,), att_dim=128, n_groups=5, distill_mode="afs", feat_ext=embedding()),
        "dsmil": tm.DSMIL(
            in_shape=(dim,), att_dim=128, nonlinear_q=True, nonlinear_v=True, dropout=0.25, feat_ext=embedding()
        ),  # fmt: skip
        "transmil": tm.TransMIL(in_shape=(dim,), att_dim=512, n_layers=2, n_heads=8, n_landmarks=256, dropout=0.1),
    }


def compare_torchmil(instances: int, dim: int, repeats: int) -> dict[str, float]:
    """Median seconds per forward+backward, ours and torchmil's, per shared model; returns ours/theirs."""
    try:
        theirs = _torchmil_models(dim)
    except ImportError as err:
        raise SystemExit(f"torchmil is not installed ({err}); pip install torchmil==1.0.2 for this benchmark") from None
    torch.manual_seed(0)
    features, coords, _, _ = _bag(instances, dim)
    ratios = {}
    for name, reference in theirs.items():
        torch.manual_seed(0)
        ours = build_model(name, dim, 2).train()
        reference.train()
        t_ours, t_theirs = [], []
        for i in range(repeats + 1):  # the first pair warms up
            for model, times in ((ours, t_ours), (reference, t_theirs)):
                model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                if model is ours:
                    _ours_step(ours, features, coords)
                else:
                    _theirs_step(reference, features)
                if i:
                    times.append(time.perf_counter() - start)
        a, b = statistics.median(t_ours), statistics.median(t_theirs)
        ratios[name] = a / b
        print(f"{name:10s} ours {a:8.4f} s  torchmil {b:8.4f} s  ratio x{a / b:5.2f}", flush=True)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--zoo", action="store_true", help="also time every model of ours against our ABMIL")
    parser.add_argument("--no-torchmil", action="store_true", help="skip the torchmil comparison")
    parser.add_argument("--fail-above", type=float, default=None, help="exit 1 if any ours/torchmil ratio exceeds it")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"bag: {args.instances} instances, D={args.dim}, torch threads={torch.get_num_threads()}")
    if not args.no_torchmil:
        ratios = compare_torchmil(args.instances, args.dim, args.repeats)
        worst = max(ratios, key=ratios.get)
        print(f"worst ratio: {worst} x{ratios[worst]:.2f}")
        if args.fail_above is not None and ratios[worst] > args.fail_above:
            raise SystemExit(1)
    if args.zoo:
        _zoo(args)


def _zoo(args: argparse.Namespace) -> None:
    results = {}
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:  # one fresh process per model
        for name in ["abmil", *[m for m in args.models if m != "abmil"]]:
            seconds, peak = pool.apply(_time_model, (name, args.instances, args.dim, args.repeats, args.threads))
            results[name] = seconds
            print(
                f"{name:10s} {seconds:8.3f} s/bag  x{seconds / results['abmil']:6.2f} vs abmil  peak RSS {peak:7.0f} MB"
            )


if __name__ == "__main__":
    main()
