"""Forward+backward seconds and peak RSS of HiVE-MIL and ViLa-MIL on one 5x/20x bag, as ratios to ABMIL.

The bag: --parents 5x patches × 16 present 20x children (32,000 instances by default), D=512, CPU,
--threads torch threads. ABMIL runs on the same 32,000 children as a flat bag. The VL models include
their text side: a ViT-B-32-sized open_clip text tower (width 512, 12 layers, random weights, frozen)
encodes every prompt of --prompts with 16 context vectors once per step. Each model runs in a fresh
process (spawn), so its peak RSS is its own. Target (issue 13): HiVE-MIL <= 5x ABMIL and <= 3 GB; the
verdict is printed for wall time and for CPU time (all threads; the steadier one on a shared machine).
Run: .venv/bin/python benchmarks/vl_speed.py
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import resource
import statistics
import time

import torch

PROMPTS = "config/prompts/tcga_nsclc_hier.json"


def _bag(parents: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(children (P, 16, D), mask (P, 16), parent features (P, D)) of random features, every slot present."""
    return torch.randn(parents, 16, dim), torch.ones(parents, 16, dtype=torch.bool), torch.randn(parents, dim)


def _tower(dim: int):
    """A frozen ViT-B-32-sized open_clip text tower with random weights (no download)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, _build_text_tower

    from slidesnake.models.vl.prompt_learner import OpenClipTextTower

    text = _build_text_tower(dim, CLIPTextCfg(context_length=77, vocab_size=49408, width=512, heads=8, layers=12))
    tok = open_clip.get_tokenizer("ViT-B-32")
    return OpenClipTextTower(text, tok, math.log(100.0), tok.sot_token_id, tok.eot_token_id)


def _time_model(
    name: str, parents: int, dim: int, repeats: int, threads: int, prompts: str
) -> tuple[float, float, float]:
    """(median wall seconds, median CPU seconds per forward+backward, peak RSS MB) of ``name``, in this process.

    CPU seconds (all threads) are printed too: on a shared machine they are steadier than wall time."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    children, mask, parent_features = _bag(parents, dim)
    if name == "abmil":
        from slidesnake.models.mil.abmil import ABMIL

        model = ABMIL(dim, 2)

        def step():
            return model(children.reshape(-1, dim))
    else:
        from slidesnake.models.vl.hier_prompts import load_hier_prompts
        from slidesnake.models.vl.hivemil import HiVEMIL
        from slidesnake.models.vl.vilamil import ViLaMIL

        hp = load_hier_prompts(prompts)
        model = (HiVEMIL if name == "hivemil" else ViLaMIL)(dim, hp.n_classes, _tower(dim), hp)

        def step():
            return model(children, mask=mask, parent_features=parent_features)

    model.train()
    times, cpu = [], []
    for _ in range(repeats + 1):  # the first run warms up
        start, start_cpu = time.perf_counter(), time.process_time()
        out = step()
        loss = torch.nn.functional.cross_entropy(out.logits.view(1, -1), torch.tensor([1]))
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        loss.backward()
        model.zero_grad()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return statistics.median(times[1:]), statistics.median(cpu[1:]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parents", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", default=PROMPTS, help="hierarchical prompt file (sets the class count)")
    args = parser.parse_args()
    print(f"bag: {args.parents} 5x parents x 16 children = {16 * args.parents} instances, D={args.dim}, "
          f"threads={args.threads}, prompts={args.prompts}")  # fmt: skip
    results: dict[str, tuple[float, float, float]] = {}
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:  # one fresh process per model
        for name in ("abmil", "hivemil", "vilamil"):
            results[name] = pool.apply(
                _time_model, (name, args.parents, args.dim, args.repeats, args.threads, args.prompts)
            )
            seconds, cpu, peak = results[name]
            ref_s, ref_cpu, ref_mb = results["abmil"]
            print(
                f"{name:8s} {seconds:7.3f} s/bag  x{seconds / ref_s:5.2f} vs abmil   "
                f"cpu {cpu:7.3f} s  x{cpu / ref_cpu:5.2f}   peak RSS {peak:6.0f} MB  x{peak / ref_mb:5.2f} vs abmil"
            )
    seconds, cpu, peak = results["hivemil"]
    ok = seconds <= 5 * results["abmil"][0] and peak <= 3 * 1024
    print(f"target HiVE-MIL <= 5x ABMIL time and <= 3072 MB: {'met' if ok else 'NOT met'}")
    ok_cpu = cpu <= 5 * results["abmil"][1] and peak <= 3 * 1024  # steadier than wall time on a shared machine
    print(f"target HiVE-MIL <= 5x ABMIL cpu time and <= 3072 MB: {'met' if ok_cpu else 'NOT met'}")


if __name__ == "__main__":
    main()
