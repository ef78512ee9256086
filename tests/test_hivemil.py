"""HiVE-MIL: prompt files, prompt learner on each tower family, TGDF, graph edges, HTCL, gradients, a fit."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _feature_fixtures import save_hf_clip_folder
from conftest import REPO

from slidesnake.features.encoders import load_encoder
from slidesnake.models.vl.graph import (
    IMG5,
    IMG20,
    TXT5,
    TXT20,
    HiveGraph,
    _RowSparseAddmm,
    build_graph,
    tgdf,
    threshold_mask,
)
from slidesnake.models.vl.hier_prompts import HierPromptError, load_hier_prompts, parse_hier_prompts
from slidesnake.models.vl.hivemil import HiVEMIL, htcl_loss, topk_mean
from slidesnake.models.vl.prompt_learner import OpenClipTextTower, PromptLearner, text_tower

TASK_CLASSES = {
    "demo_hier.json": ["solid", "glandular"],
    "tcga_nsclc_hier.json": ["LUAD", "LUSC"],
    "tcga_brca_hier.json": ["IDC", "ILC"],
    "tcga_rcc_hier.json": ["CCRCC", "PRCC", "CHRCC"],
}


@pytest.fixture(scope="module")
def tiny_tower():
    return text_tower(load_encoder("tiny-clip"))


@pytest.fixture(scope="module")
def demo_prompts():
    return load_hier_prompts(REPO / "config/prompts/demo_hier.json", ["solid", "glandular"])


# ------------------------------------------------------------------------------------ prompt files


@pytest.mark.parametrize("name", sorted(TASK_CLASSES))
def test_shipped_prompt_files_validate_with_distinct_texts(name):
    prompts = load_hier_prompts(REPO / "config/prompts" / name, TASK_CLASSES[name])
    assert prompts.classes == tuple(TASK_CLASSES[name])
    texts = prompts.coarse_texts() + prompts.fine_texts()
    assert len(texts) == 16 * len(TASK_CLASSES[name]) and len(set(texts)) == len(texts)


def test_validator_names_the_file_the_class_and_the_problem(tmp_path):
    good = json.loads((REPO / "config/prompts/demo_hier.json").read_text())
    path = tmp_path / "p.json"
    path.write_text(json.dumps(good))
    with pytest.raises(HierPromptError, match=r"p\.json.*class\(es\) \['other'\]"):
        load_hier_prompts(path, ["solid", "other"])
    bad = json.loads(json.dumps(good))
    bad["glandular"]["fine"][2] = bad["glandular"]["fine"][2][:2]
    with pytest.raises(HierPromptError, match=r"class 'glandular': 'fine\[2\]' must hold 3"):
        parse_hier_prompts(bad, source="x.json")
    bad = json.loads(json.dumps(good))
    bad["solid"]["coarse"][1]["explanation"] = "  "
    with pytest.raises(HierPromptError, match=r"class 'solid': coarse\[1\].*non-empty"):
        parse_hier_prompts(bad)
    bad = json.loads(json.dumps(good))
    bad["solid"]["fine"] = bad["solid"]["fine"][:3]
    with pytest.raises(HierPromptError, match=r"'fine' must be a list of 4 groups"):
        parse_hier_prompts(bad)


# ------------------------------------------------------------------------------------ prompt learner


def _as_words(learner: PromptLearner, tower, word: str) -> None:
    """Set every context vector to the token embedding of ``word`` (so the prompt reads 'word word … text')."""
    ids, sot, eot, _ = tower.tokenize([word])
    row = ids[0].tolist()
    token = row[1] if row[0] == sot else row[0]
    assert row.index(eot) == (2 if row[0] == sot else 1)  # one token
    with torch.no_grad():
        learner.ctx.copy_(tower.embed_tokens(torch.tensor([[token]]))[0, 0].expand_as(learner.ctx))


def _check_equivalence(tower, texts, n_ctx, word="x"):
    learner = PromptLearner(tower, texts, n_ctx=n_ctx)
    _as_words(learner, tower, word)
    with torch.no_grad():
        ours = learner(tower)
        ref = F.normalize(tower.reference_encode([" ".join([word] * n_ctx + [t]) for t in texts]), dim=-1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    return learner


def test_open_clip_prompts_are_causal_per_prompt_and_pooled_at_the_true_end_token(tiny_tower):
    texts = ["solid sheets : dense nuclei", "glands : open lumina with a pale lining of tall cells"]
    assert tiny_tower.shares_prefix  # tiny-clip takes the shared-prefix path (tests/test_prompt_fastpath.py)
    learner = _check_equivalence(tiny_tower, texts, n_ctx=16)
    ids = learner.ids
    assert (ids[torch.arange(2), learner.eot] == 49407).all()  # the EOT token after the 16-token shift
    # one prompt's embedding does not depend on the other prompts in the batch (no mixing in attention)
    alone = PromptLearner(tiny_tower, texts[:1], n_ctx=16)
    alone.ctx.data.copy_(learner.ctx.data)
    with torch.no_grad():
        torch.testing.assert_close(alone(tiny_tower)[0], learner(tiny_tower)[0])
        # the last words matter (the ViLa-MIL seed pools 16 tokens before the end and ignores them)
        changed = PromptLearner(tiny_tower, ["glands : open lumina with a pale lining of short cells"], n_ctx=16)
        changed.ctx.data.copy_(learner.ctx.data)
        assert not torch.allclose(changed(tiny_tower)[0], learner(tiny_tower)[1])


def test_hf_clip_tower_matches_its_own_text_model(tmp_path):
    tower = text_tower(load_encoder(str(save_hf_clip_folder(tmp_path / "hf"))))
    _check_equivalence(tower, ["ab : c", "de : fgh"], n_ctx=3)


def test_cls_token_tower_like_conch_matches_its_own_forward():
    """CONCH's text tower is a CoCa-style TextTransformer with an appended CLS token; open_clip's own
    implementation stands in (the conch package cannot be installed offline)."""
    import open_clip
    from open_clip.transformer import TextTransformer

    torch.manual_seed(0)
    module = TextTransformer(
        context_length=76, vocab_size=49408, width=32, heads=2, layers=2, output_dim=16, embed_cls=True,
        pad_id=0, pool_type="last", correct_cls_mask=True,
    ).eval()  # fmt: skip
    tok = open_clip.get_tokenizer("ViT-B-32")
    tower = OpenClipTextTower(module, lambda t: tok(t)[:, :-1], math.log(100), tok.sot_token_id, tok.eot_token_id)
    assert tower.appends_cls and tower.context_length == 76
    _check_equivalence(tower, ["solid sheets : dense nuclei", "glands"], n_ctx=16)


# ------------------------------------------------------------------------------------ TGDF and graph


def test_tgdf_on_a_hand_made_matrix_keeps_the_pairs_above_mean_plus_half_std():
    sim5 = torch.tensor([[0.9, 0.1], [0.1, 0.8], [0.2, 0.7], [0.3, 0.0]])
    # column 0: mean .375, std .3594 -> threshold .5547; column 1: mean .4, std .4082 -> .6041
    assert threshold_mask(sim5, 0.5).tolist() == [[True, False], [False, True], [False, True], [False, False]]
    child = torch.zeros(4, 16, dtype=torch.bool)
    child[:, [0, 5]] = True
    sim20 = torch.zeros(4, 16, 2)
    sim20[:, 0, 0] = torch.tensor([0.9, 0.8, 0.7, 0.99])
    sim20[:, 5, 0] = torch.tensor([0.2, 0.8, 0.7, 0.99])
    sim20[:, 0, 1] = torch.tensor([0.9, 0.6, 0.5, 0.99])
    sim20[:, 5, 1] = torch.tensor([0.1, 0.3, 0.2, 0.99])
    sim20[:, 7] = 5.0  # an absent child (mask False) is never kept, whatever its value
    mask5, kept, mask20 = tgdf(sim5, sim20, child, torch.tensor([0, 1]), alpha=0.5)
    assert kept.tolist() == [True, True, True, False]  # parent 3 passes no text
    # fine 0 is gated by (parent, coarse 0): only parent 0's children; gated column (.9,.2,0,0,0,0) -> thr .3634
    # fine 1 by (parent, coarse 1): parents 1, 2; gated (0,0,.6,.3,.5,.2) -> thr .3918
    assert sorted(map(tuple, mask20.nonzero().tolist())) == [(0, 0, 0), (1, 0, 1), (2, 0, 1)]
    assert not mask20[3].any() and not mask20[:, 7].any() and not mask20[0, 0, 1]  # .9 but its parent pair fell


def test_slots_and_masks_reach_the_graph_and_masked_children_are_ignored(tiny_tower, demo_prompts):
    torch.manual_seed(0)
    x20 = torch.randn(3, 16, 64)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, [0, 3, 15]] = True
    mask[1, [5]] = True
    mask[2, :] = True
    t5, t20 = torch.randn(8, 64), torch.randn(24, 64)
    parent = torch.arange(8).repeat_interleave(3)
    data = build_graph(torch.randn(3, 64), x20, mask, t5, t20, parent, alpha=-10.0)  # α=-10: keep everything
    rows, slots = mask.nonzero(as_tuple=True)
    assert data[IMG20].slot.tolist() == slots.tolist() and data[IMG20].parent.tolist() == rows.tolist()
    torch.testing.assert_close(data[IMG20].x, x20[rows, slots])
    assert data[IMG5, "parent_of", IMG20].edge_index.tolist() == [rows.tolist(), list(range(len(rows)))]
    # the model's output does not depend on what absent slots hold
    model = HiVEMIL(64, 2, tiny_tower, demo_prompts).eval()
    garbage = x20.clone()
    garbage[~mask] = 100.0 * torch.randn(int((~mask).sum()), 64)
    pf = torch.randn(3, 64)
    with torch.no_grad():
        a = model(x20, mask=mask, parent_features=pf).logits
        b = model(garbage, mask=mask, parent_features=pf).logits
    torch.testing.assert_close(a, b)


def test_a_fine_description_is_linked_to_its_own_coarse_parent_only(tiny_tower, demo_prompts):
    model = HiVEMIL(64, 2, tiny_tower, demo_prompts)
    with torch.no_grad():
        t5, t20 = model.text_features()
    data = build_graph(torch.randn(4, 64), torch.randn(4, 16, 64), torch.ones(4, 16, dtype=torch.bool), t5, t20,
                       model.fine_parent)  # fmt: skip
    coarse, fine = data[TXT5, "parent_of", TXT20].edge_index
    assert sorted(fine.tolist()) == list(range(24))  # every fine text has exactly one parent
    texts = model.prompt_learner.texts
    for c_idx, f_idx in zip(coarse.tolist(), fine.tolist()):
        cls, k = divmod(c_idx, 4)
        assert texts[c_idx] == demo_prompts.coarse[cls][k]
        assert texts[8 + f_idx] in demo_prompts.fine[cls][k]
    back = data[TXT20, "child_of", TXT5].edge_index
    assert back.flip(0).tolist() == [coarse.tolist(), fine.tolist()]


# ------------------------------------------------------------------------------------ logits and HTCL


def test_row_sparse_addmm_gradients_equal_the_dense_ones_for_sparse_and_dense_output_gradients():
    torch.manual_seed(0)
    acc, x, w = torch.randn(40, 8), torch.randn(40, 6), torch.randn(8, 6)
    for live in (torch.tensor([3, 17]), torch.arange(40)):  # the sparse branch, then the dense one
        grad = torch.zeros(40, 8)
        grad[live] = torch.randn(len(live), 8)
        ours = [t.clone().requires_grad_() for t in (acc, x, w)]
        ref = [t.clone().requires_grad_() for t in (acc, x, w)]
        out = _RowSparseAddmm.apply(*ours)
        torch.testing.assert_close(out, torch.addmm(ref[0], ref[1], ref[2].T))
        out.backward(grad)
        torch.addmm(ref[0], ref[1], ref[2].T).backward(grad)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_recompute_equals_the_full_graph_in_values_and_gradients(layers, dtype):
    """HiveGraph.topk_scores (last layer's image rows without gradient, the top-k rows recomputed with it)
    gives the full forward's similarities and top-k means, and the same gradients for every graph weight
    and every input (image and text nodes), with ties-free random data; k larger than the bag too."""
    torch.manual_seed(layers)
    d, n5 = 16, 9
    mask = torch.rand(n5, 16) > 0.4
    mask[2] = False  # a parent without children
    fine_parent = torch.arange(4).repeat_interleave(3)
    x5, x20, t5, t20 = (torch.randn(*shape, dtype=dtype) for shape in ((n5, d), (n5, 16, d), (4, d), (12, d)))
    data = build_graph(x5, x20, mask, t5, t20, fine_parent, alpha=-0.3)
    graph = HiveGraph(d, layers).to(dtype)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
    for k5, k20 in ((2, 5), (100, 1000)):
        weights = torch.randn(4 + 12 + 2, dtype=dtype)
        results = []
        for fast in (False, True):
            inputs = {node: data[node].x.detach().clone().requires_grad_() for node in (IMG5, IMG20, TXT5, TXT20)}
            for node, v in inputs.items():
                data[node].x = v
            graph.zero_grad()
            if fast:
                txt, s5, s20, per5, per20 = graph.topk_scores(data, k5, k20)
                assert not s5.requires_grad and not s20.requires_grad
            else:
                h = graph(data)
                txt = h
                s5, s20 = h[IMG5] @ h[TXT5].T, h[IMG20] @ h[TXT20].T
                per5, per20 = topk_mean(s5, k5), topk_mean(s20, k20)
            text = torch.stack([txt[TXT5].sum(), txt[TXT20][:, 0].sum()])
            (torch.cat([per5, per20, text]) * weights).sum().backward()
            grads = [p.grad.clone() for p in graph.parameters()] + [v.grad.clone() for v in inputs.values()]
            results.append((s5.detach(), s20.detach(), per5.detach(), per20.detach(), grads))
        (full, fast) = results
        for a, b in zip(full[:4], fast[:4], strict=True):
            torch.testing.assert_close(b, a, **tol)
        assert len(full[4]) == len(fast[4])
        for a, b in zip(full[4], fast[4], strict=True):
            torch.testing.assert_close(b, a, **tol)
        assert full[4][-3].abs().max() > 0  # gradient reaches the 20x inputs


def test_hivemil_training_forward_equals_the_no_grad_forward_and_explain(tiny_tower, demo_prompts):
    """The training path (top-k recompute) and the no-grad path (full graph) give the same logits, and
    explain's per-description scores still decompose them."""
    model = HiVEMIL(64, 2, tiny_tower, demo_prompts)
    torch.manual_seed(1)
    bag = torch.randn(7, 16, 64), torch.rand(7, 16) > 0.3, torch.randn(7, 64)
    out = model(bag[0], mask=bag[1], parent_features=bag[2])
    assert out.logits.requires_grad
    with torch.no_grad():
        ref = model(bag[0], mask=bag[1], parent_features=bag[2])
    ex = model.explain(bag[0], mask=bag[1], parent_features=bag[2])
    torch.testing.assert_close(out.logits.detach(), ref.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.attention, ref.attention, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.aux_loss.detach(), ref.aux_loss, atol=1e-5, rtol=1e-4)
    parts = ex["coarse"].view(2, -1).mean(1) + ex["fine"].view(2, -1).mean(1)
    torch.testing.assert_close(parts, out.logits.detach(), atol=1e-5, rtol=1e-4)


def test_htcl_equals_the_hand_computed_eq8_and_its_negative_term_is_non_zero():
    coarse = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fine = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss = htcl_loss(fine, coarse, torch.tensor([0, 1]), torch.tensor([0, 1]))

    def nls(z):  # -log sigmoid(z)
        return math.log1p(math.exp(-z))

    r = 1 / math.sqrt(2)
    # fine 0 (class 0): pos cos=1, neg cos=0; fine 1 (class 1): pos cos=r, neg cos=r
    expected = ((nls(1.0) + nls(-0.0)) + (nls(r) + nls(-r))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.25759, abs=1e-4)
    # the negative term alone: fine texts equal to other-class coarse texts are penalised
    swapped = htcl_loss(coarse.flip(0), coarse, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert swapped.item() == pytest.approx(nls(0.0) + nls(-1.0), abs=1e-6)
    assert swapped > loss


def test_topk_mean_is_capped_by_the_bag_size():
    sim = torch.tensor([[0.1, 0.9], [0.5, 0.2], [0.3, 0.4]])
    torch.testing.assert_close(topk_mean(sim, 2), torch.tensor([0.4, 0.65]))
    torch.testing.assert_close(topk_mean(sim, 100), sim.mean(0))


def test_gamma_is_the_raw_logit_scale_and_only_context_and_graph_get_gradients(tiny_tower, demo_prompts):
    model = HiVEMIL(64, 2, tiny_tower, demo_prompts)
    assert model.gamma == pytest.approx(math.log(1 / 0.07), abs=1e-4)  # open_clip's init, not exp() of it
    names = {n for n, _ in model.named_parameters()}
    assert names == {"prompt_learner.ctx"} | {n for n in names if n.startswith("graph.")}
    assert not any(k.startswith("tower") for k in model.state_dict())  # the frozen tower is not saved
    torch.manual_seed(0)
    out = model(torch.randn(6, 16, 64), mask=torch.rand(6, 16) > 0.3, parent_features=torch.randn(6, 64))
    (F.cross_entropy(out.logits.view(1, -1), torch.tensor([1])) + out.aux_loss).backward()
    assert model.prompt_learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in tiny_tower.parameters())
    assert out.attention.shape == (6,) and out.aux_loss > 0


# ------------------------------------------------------------------------------------ end to end


def text_aligned_bags(tower, prompts, n_bags, seed, n5=6, strength=1.5):
    """Bags whose class shows as children (and parents) shifted toward that class's fine (coarse) texts."""
    with torch.no_grad():
        coarse = F.normalize(tower.reference_encode(prompts.coarse_texts()), dim=-1).view(2, 4, -1)
        fine = F.normalize(tower.reference_encode(prompts.fine_texts()), dim=-1).view(2, 12, -1)
    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n_bags):
        y = i % 2
        x20 = torch.from_numpy(rng.normal(0, 1 / 8, (n5, 16, 64)).astype(np.float32))
        x5 = torch.from_numpy(rng.normal(0, 1 / 8, (n5, 64)).astype(np.float32))
        hot = torch.from_numpy(rng.random((n5, 16)) < 0.3)
        pick = torch.from_numpy(rng.integers(0, 12, (n5, 16)))
        x20 = x20 + strength * hot.unsqueeze(-1) * fine[y][pick]
        x5 = x5 + strength * coarse[y][torch.from_numpy(rng.integers(0, 4, n5))] * 0.5
        mask = torch.from_numpy(rng.random((n5, 16)) > 0.1)
        bags.append((x20, mask, x5, y))
    return bags


def fit(model, train, epochs=12, lr=1e-3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-5)
    for _ in range(epochs):
        for x20, mask, x5, y in train:
            out = model(x20, mask=mask, parent_features=x5)
            loss = F.cross_entropy(out.logits.view(1, -1), torch.tensor([y]))
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model, bags):
    with torch.no_grad():
        return np.mean([int(model(x20, mask=m, parent_features=x5).logits.argmax()) == y for x20, m, x5, y in bags])


def test_hivemil_learns_a_text_aligned_class_signal(tiny_tower, demo_prompts):
    torch.manual_seed(0)
    train = text_aligned_bags(tiny_tower, demo_prompts, 12, seed=1)
    test = text_aligned_bags(tiny_tower, demo_prompts, 20, seed=2)
    model = HiVEMIL(64, 2, tiny_tower, demo_prompts)
    fit(model, train)
    assert accuracy(model, test) >= 0.9


def test_hit_ratio_at_2_on_a_hand_made_case():
    from slidesnake.models.vl.hivemil import hit_ratio_at_2

    s5 = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.0, 0.1, 0.7, 0.9]])  # top-2 coarse: {0, 1} and {2, 3}
    fine_parent = torch.arange(4).repeat_interleave(3)  # fine i sits under coarse i // 3
    s20 = torch.zeros(3, 12)
    s20[0, 7] = s20[1, 4] = s20[2, 0] = 1.0  # best fine of each child: 7 (coarse 2), 4 (coarse 1), 0 (coarse 0)
    child_parent = torch.tensor([0, 0, 1])
    # patch 0: child 1's best sits under coarse 1, in its top 2 -> hit; patch 1: coarse 0 is not in {2, 3}
    assert float(hit_ratio_at_2(s5, s20, child_parent, fine_parent)) == 0.5
    s20[2, 0], s20[2, 10] = 0.0, 1.0  # now child 2's best sits under coarse 3
    assert float(hit_ratio_at_2(s5, s20, child_parent, fine_parent)) == 1.0
