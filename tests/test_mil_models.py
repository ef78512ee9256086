"""The MIL zoo: every model learns a key-instance task, obeys the shared interface, and fits 50k patches in 4 GB."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _mil_fixtures import hierarchy_from_flat, synthetic_bag
from sklearn.metrics import roc_auc_score

from slidesnake.models.mil import MODELS, MissingCoordsError, UnknownModelError, build_model
from slidesnake.models.mil.base import Bag
from slidesnake.train.losses import task_loss

DIM = 16
LR = {"transmil": 5e-4}  # the transformer needs a gentler step on 40 bags
KWARGS = {"transmil": {"hidden": 64, "heads": 2}}  # two heads of width 32: 32 dims split 8 ways is too narrow
torch.set_num_threads(1)  # tiny bags: thread start-up costs more than it saves on a shared CPU


def _bags(n_bags: int, seed: int):
    rng = np.random.default_rng(seed)
    signal = np.random.default_rng(99).normal(size=DIM)
    signal = (4.0 * signal / np.linalg.norm(signal)).astype(np.float32)
    bags = []
    for i in range(n_bags):
        positive = i % 2 == 1
        features, coords = synthetic_bag(rng, positive, 48, DIM, 4, signal)  # 4 key instances of 48
        h = hierarchy_from_flat(features, coords)
        bags.append(
            (
                Bag(torch.from_numpy(features), torch.from_numpy(coords)),
                Bag(torch.from_numpy(h["features"]), torch.from_numpy(h["parent_coords"]), torch.from_numpy(h["mask"])),
                int(positive),
            )
        )
    return bags


@pytest.fixture(scope="module")
def data():
    return _bags(40, seed=1), _bags(20, seed=2)


def train_abmil(train, epochs: int = 8, hidden: int = 32) -> torch.nn.Module:
    """The first stage of the two-stage models: ABMIL trained on the training bags."""
    torch.manual_seed(0)
    model = build_model("abmil", DIM, 2, hidden=hidden, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for flat, _, y in train:
            loss = task_loss("classification", model(flat.features).logits.view(1, -1), torch.tensor([y]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def first_stage(data):
    return train_abmil(data[0])


def _run(model, bag):
    return model(bag.features, coords=bag.coords, mask=bag.mask, label=None)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_learns_key_instance_task(name, data, first_stage):
    train, test = data
    torch.manual_seed(0)
    model = build_model(name, DIM, 2, **{"hidden": 32, "dropout": 0.0, **KWARGS.get(name, {})})
    if name in ("mhim", "ibmil"):  # two-stage: the fold's ABMIL first (the loop does this from model.pt)
        model.init_from_first_stage(first_stage, [flat for flat, _, _ in train])
    hier = model.input_kind == "hierarchy"
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR.get(name, 2e-3), weight_decay=1e-5)
    order = np.random.default_rng(0)
    for _ in range(6):
        model.train()
        for i in order.permutation(len(train)):
            flat, h, y = train[i]
            bag = h if hier else flat
            target = torch.tensor([y])
            out = model(bag.features, coords=bag.coords, mask=bag.mask, label=target)
            loss = task_loss("classification", out.logits.view(1, -1), target)
            if out.extra_logits is not None:
                loss = loss + task_loss("classification", out.extra_logits.view(-1, 2), target)
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        outputs = [_run(model, h if hier else flat) for flat, h, _ in test]
    prob = [float(torch.softmax(o.logits, 0)[1]) for o in outputs]
    assert roc_auc_score([y for *_, y in test], prob) >= 0.85, name  # chance is 0.5
    n_expected = len(test[0][1].features) if hier else len(test[0][0].features)
    assert outputs[0].logits.shape == (2,)
    assert outputs[0].attention is not None and outputs[0].attention.shape == (n_expected,)


def test_attention_pools_find_the_key_instances(data, first_stage):
    """ABMIL's attention mass after training sits on the key instances of a positive bag."""
    train, _ = data
    model = first_stage
    flat, _, _ = train[1]
    with torch.inference_mode():
        attention = model(flat.features).attention
    signal_score = flat.features @ torch.from_numpy(np.random.default_rng(99).normal(size=DIM).astype(np.float32))
    key = torch.topk(signal_score, 4).indices
    assert float(attention[key].sum()) > 0.5  # 4 of 48 instances hold most of the mass (uniform: 0.083)


def test_registry_errors():
    with pytest.raises(UnknownModelError, match="abmil"):
        build_model("nope", 8, 2)
    with pytest.raises(MissingCoordsError, match="coords"):
        build_model("patchgcn", 8, 2)(torch.zeros(5, 8))


def test_50k_instance_forward_every_model_under_4gb():
    """One inference forward per model on a 50,000-instance bag, D=64; peak RSS of the process < 4 GB.

    The peak is the child's own VmHWM: ru_maxrss survives exec, so a child spawned from a pytest process
    that has grown past 4 GB would report the parent's peak, not its own.
    """
    script = textwrap.dedent(
        """
        import sys
        import numpy as np, torch
        sys.path.insert(0, sys.argv[1])
        from _mil_fixtures import hierarchy_from_flat, synthetic_bag
        from slidesnake.models.mil import MODELS, build_model
        from slidesnake.models.mil.base import Bag
        torch.set_num_threads(2)
        f, c = synthetic_bag(np.random.default_rng(0), True, 50_000, 64, 5, np.ones(64, np.float32))
        h = hierarchy_from_flat(f, c)
        for name in MODELS:
            model = build_model(name, 64, 2).eval()
            if name == "ibmil":  # its dictionary comes from a first-stage ABMIL (random weights suffice here)
                model.init_from_first_stage(build_model("abmil", 64, 2), [Bag(torch.randn(20, 64)) for _ in range(8)])
            with torch.inference_mode():
                if model.input_kind == "hierarchy":
                    out = model(torch.from_numpy(h["features"]), mask=torch.from_numpy(h["mask"]))
                else:
                    out = model(torch.from_numpy(f), coords=torch.from_numpy(c))
            assert out.logits.shape == (2,) and torch.isfinite(out.logits).all(), name
            hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
            print(name, hwm_kb // 1024, flush=True)
        """
    )
    tests_dir = str(Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-c", script, tests_dir],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    peaks = dict(line.split() for line in result.stdout.split("\n") if line)
    assert set(peaks) == set(MODELS)
    assert max(int(v) for v in peaks.values()) < 4096, peaks
