"""ViLa-MIL: true end-of-text pooling, dual-scale text decoding, gradients, masks, a text-aligned fit."""

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from test_hivemil import accuracy, fit, text_aligned_bags

from slidesnake.features.encoders import load_encoder
from slidesnake.models.vl.hier_prompts import load_hier_prompts
from slidesnake.models.vl.prompt_learner import text_tower
from slidesnake.models.vl.vilamil import ViLaMIL


@pytest.fixture(scope="module")
def tower():
    return text_tower(load_encoder("tiny-clip"))


@pytest.fixture(scope="module")
def prompts():
    return load_hier_prompts(REPO / "config/prompts/demo_hier.json", ["solid", "glandular"])


def test_class_texts_pool_each_prompt_at_its_true_end_token(tower, prompts):
    model = ViLaMIL(64, 2, tower, prompts)
    learner = model.prompt_learner
    ids = learner.ids
    assert (ids[torch.arange(len(ids)), learner.eot] == 49407).all()
    x_id = tower.tokenize(["x"])[0][0, 1]
    with torch.no_grad():
        learner.ctx.copy_(tower.embed_tokens(x_id.view(1, 1))[0, 0].expand_as(learner.ctx))
        low, high = model.class_texts()
        ref = F.normalize(tower.reference_encode(["x " * 16 + t for t in prompts.coarse_texts()]), dim=-1)
        ref_fine = F.normalize(tower.reference_encode(["x " * 16 + t for t in prompts.fine_texts()]), dim=-1)
    torch.testing.assert_close(low, F.normalize(ref.view(2, 4, -1).mean(1), dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(high, F.normalize(ref_fine.view(2, 12, -1).mean(1), dim=-1), atol=1e-5, rtol=1e-4)


def test_only_context_and_vila_heads_train_and_masked_children_are_ignored(tower, prompts):
    torch.manual_seed(0)
    model = ViLaMIL(64, 2, tower, prompts)
    assert model.prototypes.shape == (16, 64)
    x20, mask, x5 = torch.randn(5, 16, 64), torch.rand(5, 16) > 0.4, torch.randn(5, 64)
    out = model(x20, mask=mask, parent_features=x5)
    assert out.attention.shape == (5,) and out.attention.sum().item() == pytest.approx(1.0, abs=1e-5)
    F.cross_entropy(out.logits.view(1, -1), torch.tensor([0])).backward()
    assert model.prompt_learner.ctx.grad.abs().sum() > 0 and model.prototypes.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None for p in tower.parameters())
    garbage = x20.clone()
    garbage[~mask] = 50.0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x20, mask=mask, parent_features=x5).logits, model(garbage, mask=mask, parent_features=x5).logits
        )


def test_both_scales_contribute_to_the_logits(tower, prompts):
    torch.manual_seed(0)
    model = ViLaMIL(64, 2, tower, prompts).eval()
    x20, mask, x5 = torch.randn(5, 16, 64), torch.ones(5, 16, dtype=torch.bool), torch.randn(5, 64)
    with torch.no_grad():
        base = model(x20, mask=mask, parent_features=x5).logits
        assert not torch.allclose(base, model(x20, mask=mask, parent_features=x5 + 1).logits)
        assert not torch.allclose(base, model(x20 + 1, mask=mask, parent_features=x5).logits)


def test_vilamil_learns_a_text_aligned_class_signal(tower, prompts):
    torch.manual_seed(0)
    train = text_aligned_bags(tower, prompts, 12, seed=1)
    test = text_aligned_bags(tower, prompts, 20, seed=2)
    model = ViLaMIL(64, 2, tower, prompts)
    fit(model, train)
    assert accuracy(model, test) >= 0.9
