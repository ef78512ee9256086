"""Each MIL model does the thing it is named for (issue 10, item 11), not only a task mean pooling solves.

Bags: 48 instances of dimension 16; a positive bag has ``N_KEY`` key instances carrying a signal
direction at known rows, a negative bag none.
"""

import logging
import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from slidesnake.models.mil import base, build_model
from slidesnake.models.mil.base import Bag, FirstStageError, GatedAttention, dropout_mask, embed, grid_window
from slidesnake.models.mil.mhim import soft_target_cross_entropy
from slidesnake.models.mil.patchgcn import knn_graph
from slidesnake.models.mil.transmil import banded_conv
from slidesnake.train.losses import discrete_survival_nll, task_loss

DIM, N, N_KEY = 16, 48, 6
torch.set_num_threads(1)


def _signal() -> torch.Tensor:
    s = np.random.default_rng(99).normal(size=DIM)
    return torch.as_tensor(4.0 * s / np.linalg.norm(s), dtype=torch.float32)


def _bags(n_bags: int, seed: int) -> list[tuple[Bag, int, torch.Tensor]]:
    """(bag on a square grid, label, key-instance rows) with labels alternating 0, 1."""
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(N))
    coords = torch.as_tensor(np.stack(np.divmod(np.arange(N), side), axis=1)[:, ::-1] * 256, dtype=torch.int64)
    out = []
    for i in range(n_bags):
        features = torch.as_tensor(rng.normal(size=(N, DIM)), dtype=torch.float32)
        key = torch.as_tensor(np.sort(rng.choice(N, N_KEY, replace=False)))
        if i % 2:
            features[key] += _signal()
        out.append((Bag(features, coords.clone()), i % 2, key))
    return out


def _train(model, bags, epochs: int, lr: float = 2e-3, bag_weight: float = 1.0):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    order = np.random.default_rng(0)
    for _ in range(epochs):
        model.train()
        for i in order.permutation(len(bags)):
            bag, y, _ = bags[i]
            target = torch.tensor([y])
            out = model(bag.features, coords=bag.coords, mask=bag.mask, label=target)
            loss = bag_weight * task_loss("classification", out.logits.view(1, -1), target)
            if out.extra_logits is not None:
                loss = loss + task_loss("classification", out.extra_logits.view(-1, 2), target)
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def train_bags():
    return _bags(40, seed=1)


@pytest.fixture(scope="module")
def abmil(train_bags):
    torch.manual_seed(0)
    return _train(build_model("abmil", DIM, 2, hidden=32, dropout=0.0), train_bags, epochs=8)


# --- CLAM -------------------------------------------------------------------------------------------------


def test_clam_instance_loss_is_positive_and_its_top_k_are_the_key_instances(train_bags, caplog):
    torch.manual_seed(0)
    model = build_model("clam_sb", DIM, 2, hidden=32, dropout=0.0, k_sample=4)
    assert model.bag_weight == 0.7 and model.instance_weight == 0.3  # the reference's weights
    model.train()
    bag, y, _ = train_bags[1]
    out = model(bag.features, label=torch.tensor([y]))
    assert out.aux_loss is not None and float(out.aux_loss.detach()) > 0.0
    _train(model, train_bags, epochs=6, bag_weight=model.bag_weight)
    hits = []
    for bag, _, key in train_bags[1:20:2]:  # positive bags
        with torch.inference_mode():
            top, bottom = model.top_k(model(bag.features).attention)
        hits.append(len(set(top.tolist()) & set(key.tolist())) / len(top))
        assert not set(bottom.tolist()) & set(key.tolist())
    assert np.mean(hits) >= 0.8, hits  # the pseudo-labelled positives are key instances (chance: 6/48)
    # no single class label (multilabel, survival): no instance loss, said once per job
    model.train()
    with caplog.at_level(logging.WARNING, logger="slidesnake.models.mil.clam"):
        outs = [model(bag.features, label=None) for bag, _, _ in train_bags[:3]]
    assert all(o.aux_loss is None for o in outs)
    assert sum("no instance-clustering loss" in r.message for r in caplog.records) == 1


# --- DSMIL ------------------------------------------------------------------------------------------------


def test_dsmil_attends_from_the_max_scoring_critical_instance(train_bags):
    torch.manual_seed(0)
    model = build_model("dsmil", DIM, 3, hidden=32, dropout=0.0).eval()
    bag = train_bags[1][0]
    with torch.inference_mode():
        out = model(bag.features)
        h = model.embed(bag.features)
        scores = model.instance_classifier(h)
        c = int(out.logits.argmax())
        critical = int(scores[:, c].argmax())
        q = model.query(h)
        expected = torch.softmax(q @ q[critical] / q.shape[1] ** 0.5, dim=0)
    torch.testing.assert_close(out.attention, expected)
    torch.testing.assert_close(out.extra_logits.view(-1), scores.max(dim=0).values)  # the max-instance stream
    # another critical instance gives another map: the map is not a function of the bag alone
    other = torch.softmax(q @ q[(critical + 1) % N] / q.shape[1] ** 0.5, dim=0)
    assert not torch.allclose(out.attention, other)


# --- DTFD -------------------------------------------------------------------------------------------------


def test_dtfd_makes_the_configured_random_pseudo_bags_in_training_and_evaluation(train_bags):
    torch.manual_seed(0)
    model = build_model("dtfd", DIM, 2, hidden=32, dropout=0.0, n_groups=3, eval_draws=5)
    bag = train_bags[1][0]
    model.train()
    assert model(bag.features).extra_logits.shape == (3, 2)
    groups = model.pseudo_bags(torch.randperm(N))
    assert len(groups) == 3 and sorted(torch.cat(groups).tolist()) == list(range(N))
    model.eval()
    with torch.inference_mode():
        out = model(bag.features)
        again = model(bag.features)
        assert out.extra_logits.shape == (15, 2)  # 3 pseudo-bags x 5 draws
        torch.testing.assert_close(out.logits, again.logits)  # fixed seed: a slide always scores the same
        # the evaluation splits are random like training's, not contiguous strips, and averaged
        g = torch.Generator().manual_seed(model.eval_seed)
        h = model.embed(bag.features)
        scores = model.tier1_attention(h)
        draws = [model._split_forward(h, scores, torch.randperm(N, generator=g)) for _ in range(5)]
        torch.testing.assert_close(out.logits, torch.stack([d.logits for d in draws]).mean(dim=0))
        strips = model._split_forward(h, scores, torch.arange(N))
        assert not torch.allclose(out.logits, strips.logits)
    first = model.pseudo_bags(torch.randperm(N, generator=torch.Generator().manual_seed(model.eval_seed)))[0]
    assert first.tolist() != list(range(len(first)))


# --- MHIM -------------------------------------------------------------------------------------------------


def test_mhim_teacher_is_the_trained_abmil_and_masks_what_it_attends(train_bags, abmil):
    torch.manual_seed(0)
    model = build_model("mhim", DIM, 2, hidden=32, dropout=0.0, top_fraction=0.25, mask_ratio=0.5)
    model.train()
    bag, y, key = train_bags[1]
    with pytest.raises(FirstStageError, match="ABMIL"):
        model(bag.features, label=torch.tensor([y]))
    model.init_from_first_stage(abmil, [b for b, _, _ in train_bags])
    for name, value in abmil.state_dict().items():  # teacher = the trained ABMIL, the student is its own
        torch.testing.assert_close(model.teacher.state_dict()[name], value)
    assert not torch.allclose(model.student.embed[0].weight, abmil.embed[0].weight)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    out = model(bag.features, label=torch.tensor([y]))
    with torch.no_grad():
        teacher_bag, teacher_attention = model.teacher.bag_embedding(bag.features)
    masked = (out.attention == 0).nonzero().view(-1)
    n_top = int(N * 0.25)
    assert len(masked) == int(n_top * 0.5)
    assert set(masked.tolist()) <= set(torch.topk(teacher_attention, n_top).indices.tolist())
    assert set(masked.tolist()) & set(key.tolist())  # the trained teacher attends the key instances: they go
    # consistency = soft-target cross-entropy of the embeddings, teacher temperature 0.1 (the reference's)
    keep = (out.attention > 0).nonzero().view(-1)
    student_bag, _ = model.student.bag_embedding(bag.features[keep])
    expected = -(torch.softmax(teacher_bag / 0.1, -1) * torch.log_softmax(student_bag, -1)).sum()
    torch.testing.assert_close(out.aux_loss, model.consistency_weight * expected)
    torch.testing.assert_close(soft_target_cross_entropy(student_bag, teacher_bag), expected)
    # the EMA keeps the teacher near its ABMIL start (momentum 0.9997 per step)
    before = model.teacher.embed[0].weight.clone()
    model(bag.features, label=torch.tensor([y]))
    delta = model.teacher.embed[0].weight - before
    torch.testing.assert_close(delta, 0.0003 * (model.student.embed[0].weight - before).detach())


def test_two_stage_hooks_refuse_other_models_and_mismatched_first_stages(train_bags, abmil):
    with pytest.raises(FirstStageError, match="one-stage"):
        build_model("abmil", DIM, 2).init_from_first_stage(abmil, [])
    with pytest.raises(FirstStageError, match="hidden"):
        build_model("mhim", DIM, 2, hidden=64).init_from_first_stage(abmil, [b for b, _, _ in train_bags])
    with pytest.raises(FirstStageError, match="hidden"):
        build_model("ibmil", DIM, 2, hidden=64).init_from_first_stage(abmil, [b for b, _, _ in train_bags])
    with pytest.raises(FirstStageError, match="n_confounders"):
        build_model("ibmil", DIM, 2, hidden=32).init_from_first_stage(abmil, [b for b, _, _ in train_bags[:3]])


# --- IBMIL ------------------------------------------------------------------------------------------------


def test_ibmil_dictionary_is_kmeans_of_first_stage_embeddings_and_frozen(train_bags, abmil):
    torch.manual_seed(0)
    model = build_model("ibmil", DIM, 2, hidden=32, dropout=0.0, n_confounders=4)
    with pytest.raises(FirstStageError, match="dictionary"):
        model(train_bags[0][0].features)
    model.init_from_first_stage(abmil, [b for b, _, _ in train_bags])
    with torch.inference_mode():
        z = torch.stack([abmil.bag_embedding(b.features)[0] for b, _, _ in train_bags]).numpy()
    centres = KMeans(n_clusters=4, n_init=10, random_state=66).fit(z.astype(np.float64)).cluster_centers_
    torch.testing.assert_close(model.confounders, torch.as_tensor(centres, dtype=torch.float32))
    assert float(model.confounders.abs().sum()) > 0 and bool(model.dictionary_ready)
    dictionary = model.confounders.clone()
    assert all(p is not model.confounders for p in model.parameters())  # a buffer, not trained
    _train(model, train_bags[:10], epochs=2)
    torch.testing.assert_close(model.confounders, dictionary)  # not updated during training
    # saved with the checkpoint: a fresh model loads it and scores the same
    fresh = build_model("ibmil", DIM, 2, hidden=32, dropout=0.0, n_confounders=4)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.inference_mode():
        torch.testing.assert_close(fresh(train_bags[1][0].features).logits, model(train_bags[1][0].features).logits)
        # the intervention uses the dictionary: another dictionary, another prediction
        fresh.confounders.mul_(-1)
        assert not torch.allclose(fresh(train_bags[1][0].features).logits, model(train_bags[1][0].features).logits)


# --- spatial models ---------------------------------------------------------------------------------------


def _grid_bag(n: int, seed: int = 0) -> Bag:
    side = math.ceil(math.sqrt(n))
    cells = np.stack(np.divmod(np.arange(n), side), axis=1)[:, ::-1]
    return Bag(torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), torch.as_tensor(cells * 256))


def test_patchgcn_output_follows_coordinates_not_row_order():
    torch.manual_seed(0)
    model = build_model("patchgcn", DIM, 2, hidden=32, dropout=0.0).eval()
    bag = _grid_bag(100)
    bag.coords = bag.coords + torch.randint(0, 40, bag.coords.shape)  # jitter: no ties among neighbours
    perm = torch.randperm(100)
    with torch.inference_mode():
        base = model(bag.features, coords=bag.coords).logits
        together = model(bag.features[perm], coords=bag.coords[perm]).logits
        shuffled = model(bag.features, coords=bag.coords[perm]).logits
    torch.testing.assert_close(together, base)  # a graph: row order does not matter
    assert (shuffled - base).abs().max() > 1e-4  # positions do


def test_patchgcn_aggregates_neighbours_by_a_learnt_softmax():
    """The reference's GENConv softmax aggregation: between the mean and the max of a node's neighbour
    messages (a lone strong focus survives, unlike under a mean), with a temperature that is learnt."""
    torch.manual_seed(0)
    model = build_model("patchgcn", DIM, 2, hidden=16, dropout=0.0)
    convs = [model.first_conv, *(layer.conv for layer in model.layers)]
    bag = _grid_bag(64)
    model(bag.features, coords=bag.coords).logits.sum().backward()
    for conv in convs:
        t = conv.aggr_module.t
        assert isinstance(t, torch.nn.Parameter) and t.grad is not None and float(t.grad.abs()) > 0
    messages = torch.tensor([[0.0], [0.0], [0.0], [0.0], [0.0], [0.0], [0.0], [4.0]])  # 8 neighbours, one focus
    with torch.no_grad():
        value = float(convs[0].aggr_module(messages, torch.zeros(8, dtype=torch.long), dim_size=1))
    assert messages.mean() + 0.5 < value < messages.max()


def test_patchgcn_training_bag_is_a_contiguous_crop_with_the_full_graph_spacing():
    model = build_model("patchgcn", DIM, 2)
    bag = _grid_bag(900)
    crop = model.training_bag(bag, 200, torch.Generator().manual_seed(3))
    assert len(crop) == 200
    full_graph = knn_graph(bag.coords.float(), 8)
    crop_graph = knn_graph(crop.coords.float(), 8)
    spacing = lambda c, g: (c[g] - c[:, None]).float().norm(dim=-1).mean()  # noqa: E731
    torch.testing.assert_close(spacing(crop.coords, crop_graph), spacing(bag.coords, full_graph), rtol=0.05, atol=0)
    # the default random subset of the same size stretches the graph (what evaluation never sees)
    subset = build_model("abmil", DIM, 2).training_bag(bag, 200, torch.Generator().manual_seed(3))
    assert spacing(subset.coords, knn_graph(subset.coords.float(), 8)) > 1.5 * spacing(bag.coords, full_graph)


@pytest.mark.parametrize("name", ["transmil", "rrt"])
def test_grid_models_crop_a_window_of_the_full_bag_grid(name):
    kwargs = {"hidden": 64, "heads": 2} if name == "transmil" else {"hidden": 32}
    model = build_model(name, DIM, 2, **kwargs)
    n, max_instances = 5000, 1000
    bag = _grid_bag(n)
    side = model.grid_side(n) if name == "rrt" else math.ceil(math.sqrt(n))
    bag.features[:, 0] = torch.arange(n, dtype=torch.float32)  # tag each row with its index
    crop = model.training_bag(bag, max_instances, torch.Generator().manual_seed(1))
    index = crop.features[:, 0].long()
    torch.testing.assert_close(crop.coords, bag.coords[index])  # rows move with their coords
    w = math.isqrt(len(crop))
    assert w * w == len(crop) and len(crop) > max_instances // 2 and len(crop) <= max_instances
    grid = index.view(w, w)  # what the model's own squaring of the crop lays out
    # right neighbour = next row of the bag, lower neighbour = one full-bag grid row on: the full bag's grid
    assert (grid[:, 1:] - grid[:, :-1] == 1).all() and (grid[1:] - grid[:-1] == side).all()
    if name == "rrt":  # region-aligned: the same regions as the full bag
        r = model.region_side
        assert w % r == 0 and int(grid[0, 0]) // side % r == 0 and int(grid[0, 0]) % side % r == 0
    small = _grid_bag(100)
    assert model.training_bag(small, max_instances, torch.Generator()) is small


def test_grid_window_keeps_inside_the_filled_rows():
    index = grid_window(90, 10, 20, torch.Generator().manual_seed(0))
    assert index.numel() == 81 and index.max() < 90


# --- hierarchical -----------------------------------------------------------------------------------------


def test_hierarchical_model_ignores_masked_children():
    torch.manual_seed(0)
    model = build_model("hipt", DIM, 2, hidden=32, dropout=0.0).eval()
    features = torch.randn(6, 16, DIM)
    mask = torch.rand(6, 16) > 0.4
    mask[:, 0] = True
    changed = features.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), DIM) * 10
    with torch.inference_mode():
        a = model(features, mask=mask).logits
        b = model(changed, mask=mask).logits
        c = model(changed, mask=torch.ones_like(mask)).logits
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4  # the same children unmasked do count


# --- survival loss ----------------------------------------------------------------------------------------


def test_survival_nll_of_censored_and_uncensored_cases_equals_hand_computed():
    logits = torch.tensor([[0.2, -0.5, 1.0, 0.3]])
    h = torch.sigmoid(logits)[0]
    # censored in bin 1 (alive through its end): -log S(1) = -log[(1 - h0)(1 - h1)]  (Zadeh & Schmid, Patch-GCN)
    censored = discrete_survival_nll(logits, torch.tensor([1]), torch.tensor([0]))
    torch.testing.assert_close(censored, -torch.log((1 - h[0]) * (1 - h[1])))
    # death in bin 2: -log S(1) - log h2
    died = discrete_survival_nll(logits, torch.tensor([2]), torch.tensor([1]))
    torch.testing.assert_close(died, -torch.log((1 - h[0]) * (1 - h[1])) - torch.log(h[2]))


# --- TransMIL's map ---------------------------------------------------------------------------------------


def test_transmil_map_is_the_class_token_attention_row():
    """With no more tokens than landmarks Nystrom attention is exact: the map is softmax(q_cls K^T) of layer 2."""
    torch.manual_seed(0)
    model = build_model("transmil", DIM, 2, hidden=64, heads=2, dropout=0.0).eval()  # 32 landmarks
    features = torch.randn(16, DIM)  # 16 instances + class token = 17 tokens (a 4x4 grid: no wrap-padding)
    seen = {}
    model.layer2.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    with torch.inference_mode():
        out = model(features)
        x = seen["x"]
        q, k, _ = model.layer2.qkv(x).view(len(x), 3, 2, -1).permute(1, 2, 0, 3)
        exact = torch.softmax(q[:, :1] * model.layer2.scale @ k.transpose(-1, -2), dim=-1)[:, 0]  # (heads, 17)
    expected = exact.mean(dim=0)[1:]
    torch.testing.assert_close(out.attention, expected, atol=2e-3, rtol=0.05)
    assert int(out.attention.argmax()) == int(expected.argmax())


@pytest.mark.parametrize("n", [1, 31, 32, 100, 257])
def test_transmil_banded_residual_equals_the_depthwise_conv_in_values_and_gradients(n):
    """The Nystromformer residual as banded matrix products = F.conv2d(v, w, groups=heads), incl. both ends
    and lengths that are not a multiple of the block (and shorter than the kernel)."""
    torch.manual_seed(0)
    heads, d, k = 3, 8, 33
    v = torch.randn(heads, n, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(heads, 1, k, 1, dtype=torch.float64, requires_grad=True)
    g = torch.randn(heads, n, d, dtype=torch.float64)
    conv = torch.nn.functional.conv2d(v.unsqueeze(0), w, padding=(k // 2, 0), groups=heads).squeeze(0)
    gv, gw = torch.autograd.grad((conv * g).sum(), (v, w))
    band = banded_conv(v, w)
    bv, bw = torch.autograd.grad((band * g).sum(), (v, w))
    torch.testing.assert_close(band, conv)
    torch.testing.assert_close(bv, gv)
    torch.testing.assert_close(bw, gw)


# --- dropout: the cheaper masks keep nn.Dropout's semantics -----------------------------------------------


def test_dropout_mask_has_the_rate_and_scale_of_nn_dropout():
    """Entries are 1/(1-p) with probability 1-p, else 0 (inverted dropout); p = 1 drops everything."""
    torch.manual_seed(0)
    for p in (0.1, 0.25, 0.5):
        mask = dropout_mask(torch.empty(400_000), p)
        torch.testing.assert_close(mask.unique(), torch.tensor([0.0, 1 / (1 - p)]))
        assert (mask > 0).float().mean().item() == pytest.approx(1 - p, abs=3e-3)
        assert mask.mean().item() == pytest.approx(1.0, abs=5e-3)
    assert not dropout_mask(torch.empty(10), 1.0).any()


def test_fused_embedding_equals_linear_relu_dropout_in_values_gradients_and_state_dict(monkeypatch):
    """Mask-then-ReLU in place on the Linear's output = nn.Sequential(Linear, ReLU, Dropout) with that mask."""
    torch.manual_seed(0)
    fused = embed(DIM, 32, 0.25).train()
    plain = torch.nn.Sequential(torch.nn.Linear(DIM, 32), torch.nn.ReLU())
    plain.load_state_dict(fused.state_dict())  # same parameter names: checkpoints of either load into the other
    mask = dropout_mask(torch.empty(N, 32), 0.25)
    monkeypatch.setattr(base, "dropout_mask", lambda like, p: mask)
    x = torch.randn(N, DIM)
    weight = torch.randn(N, 32)
    out_fused, out_plain = fused(x), plain(x) * mask
    torch.testing.assert_close(out_fused, out_plain, rtol=0, atol=0)
    (out_fused * weight).sum().backward()
    (out_plain * weight).sum().backward()
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    fused.eval()
    torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=0)


def test_gated_attention_drops_each_branch_at_its_rate():
    """One mask on tanh * sigmoid keeps an entry with probability (1-p)^2 and scales it by 1/(1-p)^2,
    as independent dropout on both branches does (the CLAM reference's placement)."""
    torch.manual_seed(0)
    attention = GatedAttention(DIM, 64, dropout=0.25).train()
    gates = []
    attention.w.register_forward_pre_hook(lambda mod, args: gates.append(args[0]))
    h = torch.randn(4000, DIM)
    attention(h)
    v, u = attention.v[0], attention.u[0]
    plain = torch.tanh(v(h)) * torch.sigmoid(u(h))
    kept = gates[0] != 0
    assert kept.float().mean().item() == pytest.approx(0.75**2, abs=5e-3)
    torch.testing.assert_close(gates[0][kept], plain[kept] / 0.75**2)
