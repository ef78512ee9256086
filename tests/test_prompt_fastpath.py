"""The shared-prefix text path equals the per-prompt path (embeddings and the context gradient), and
towers it does not re-implement (CLS-appending, custom blocks, transformers CLIP) keep the per-prompt path."""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, _build_text_tower
from open_clip.transformer import TextTransformer

from slidesnake.models.vl.prompt_learner import HFClipTextTower, OpenClipTextTower, PromptLearner

TEXTS = [
    "solid sheets : dense nuclei",
    "glands : open lumina with a pale lining of tall cells and a thin fibrous stroma around them",
    "x",
    "keratin pearls : eosinophilic whorls",
]


def _tower(**cfg) -> OpenClipTextTower:
    """A small random-weight open_clip text tower, built as benchmarks/vl_speed.py builds the full-size one."""
    torch.manual_seed(0)
    base = dict(context_length=77, vocab_size=49408, width=64, heads=4, layers=3)
    module = _build_text_tower(32, CLIPTextCfg(**(base | cfg)))
    tok = open_clip.get_tokenizer("ViT-B-32")
    return OpenClipTextTower(module, tok, math.log(100.0), tok.sot_token_id, tok.eot_token_id)


def _both_paths(learner: PromptLearner, tower, weights: torch.Tensor):
    """(embeddings, ctx gradient of Σ weights·embeddings) by the fast and the per-prompt path."""
    out = []
    for encode in (lambda: learner(tower), lambda: F.normalize(learner.encode_full(tower), dim=-1)):
        learner.ctx.grad = None
        emb = encode()
        (emb * weights.to(emb.dtype)).sum().backward()
        out.append((emb.detach(), learner.ctx.grad.clone()))
    return out


def test_shared_prefix_path_equals_the_per_prompt_path_with_its_context_gradient():
    tower = _tower()
    assert tower.shares_prefix
    learner = PromptLearner(tower, TEXTS, n_ctx=16)
    with torch.no_grad():
        learner.ctx.normal_(0, 0.5)  # far from the init so the context matters
    weights = torch.randn(len(TEXTS), 32)
    (fast, g_fast), (full, g_full) = _both_paths(learner, tower, weights)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_fast, g_full, atol=1e-5, rtol=1e-4)
    assert g_full.abs().max() > 1e-3  # the gradient is not trivially zero
    # in float64 the two paths agree to rounding: the same mathematics, re-ordered
    tower64 = _tower().double()
    learner64 = PromptLearner(tower64, TEXTS, n_ctx=16).double()
    learner64.ctx.data.copy_(learner.ctx.data)
    (fast, g_fast), (full, g_full) = _both_paths(learner64, tower64, weights)
    torch.testing.assert_close(fast, full, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g_fast, g_full, atol=1e-12, rtol=1e-10)


def test_shared_prefix_path_equals_the_towers_own_encode_text_with_word_context():
    """With every context vector set to a word's embedding, the prompt is plain text the tower encodes itself."""
    tower = _tower()
    learner = PromptLearner(tower, TEXTS, n_ctx=4)
    ids, sot, _, _ = tower.tokenize(["x"])
    with torch.no_grad():
        learner.ctx.copy_(tower.embed_tokens(ids[:, 1:2])[0, 0].expand_as(learner.ctx))
        ours = learner(tower)
        ref = F.normalize(tower.reference_encode([" ".join(["x"] * 4 + [t]) for t in TEXTS]), dim=-1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_a_prompt_cut_to_the_context_length_and_a_single_prompt_take_the_fast_path_correctly():
    tower = _tower(context_length=24)  # 16 context slots leave 6 words: the long prompt is cut
    for texts in (TEXTS, TEXTS[1:2]):
        learner = PromptLearner(tower, texts, n_ctx=16)
        (fast, g_fast), (full, g_full) = _both_paths(learner, tower, torch.randn(len(texts), 32))
        torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(g_fast, g_full, atol=1e-5, rtol=1e-4)


def _no_fast_path(tower, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the shared-prefix path must not run for this tower")

    monkeypatch.setattr(type(tower), "encode_shared_prefix", refuse)


@pytest.mark.parametrize("kind", ["cls", "custom_block"])
def test_towers_the_fast_path_does_not_cover_fall_back_to_the_per_prompt_path(kind, monkeypatch):
    """A CLS-appending tower (CONCH-like) and one with custom blocks (qk-norm) keep the per-prompt path,
    which still equals the tower's own forward."""
    torch.manual_seed(0)
    tok = open_clip.get_tokenizer("ViT-B-32")
    if kind == "cls":
        module = TextTransformer(
            context_length=76, vocab_size=49408, width=32, heads=2, layers=2, output_dim=16, embed_cls=True,
            pad_id=0, pool_type="last", correct_cls_mask=True,
        ).eval()  # fmt: skip
        tower = OpenClipTextTower(module, lambda t: tok(t)[:, :-1], math.log(100), tok.sot_token_id, tok.eot_token_id)
    else:
        module = TextTransformer(width=32, heads=2, layers=2, output_dim=16, qk_norm=True).eval()
        tower = OpenClipTextTower(module, tok, math.log(100), tok.sot_token_id, tok.eot_token_id)
    assert not tower.shares_prefix
    _no_fast_path(tower, monkeypatch)
    learner = PromptLearner(tower, TEXTS[:2], n_ctx=3)
    ids, *_ = tower.tokenize(["x"])
    with torch.no_grad():
        learner.ctx.copy_(tower.embed_tokens(ids[:, 1:2])[0, 0].expand_as(learner.ctx))
        ours = learner(tower)
        ref = F.normalize(tower.reference_encode([" ".join(["x"] * 3 + [t]) for t in TEXTS[:2]]), dim=-1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_the_transformers_clip_tower_has_no_fast_path():
    assert HFClipTextTower.shares_prefix is False
