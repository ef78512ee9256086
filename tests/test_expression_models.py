"""BLEEP / HECLIP mechanisms: targets normalised over the axis the loss sums over and detached, the
symmetric vs image-centric losses, retrieval (chunked == unchunked; simple, weighted), the ridge probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slidesnake.models.expression.contrastive import (
    ContrastiveConfig,
    ImageExpressionModel,
    _set_trainable,
    bleep_loss,
    heclip_loss,
    predict,
    soft_targets,
    train_contrastive,
)
from slidesnake.models.expression.retrieval import retrieve, topk_weights
from slidesnake.models.expression.ridge import fit_predict, ridge_probe


def test_targets_rows_sum_to_one_and_carry_no_gradient():
    img = torch.randn(6, 4, requires_grad=True)
    spot = torch.randn(6, 4, requires_grad=True)
    sim = img @ spot.T  # not symmetric: the transpose's rows differ from a row-softmax's columns
    targets = soft_targets(sim)
    assert not targets.requires_grad
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(6))
    # the reference's CE(logitsᵀ, softmax(sim)ᵀ) uses targets whose rows do NOT sum to one
    assert not torch.allclose(F.softmax(sim, dim=-1).T.sum(dim=1), torch.ones(6))


def test_heclip_gradient_flows_through_logits_only():
    img = torch.randn(8, 5, requires_grad=True)
    spot = torch.randn(8, 5, requires_grad=True)
    heclip_loss(img, spot).backward()
    g_img = img.grad.clone()
    # the same loss with the target computed from a constant copy of img: identical gradient
    img2 = img.detach().clone().requires_grad_(True)
    logits = spot.detach() @ img2.T
    target = F.softmax(img.detach() @ img.detach().T, dim=-1)
    F.cross_entropy(logits.T, target).backward()
    torch.testing.assert_close(g_img, img2.grad)


def test_heclip_is_image_centric_and_bleep_symmetric():
    torch.manual_seed(0)
    img, spot = torch.randn(7, 3), torch.randn(7, 3)
    # HECLIP: each image's distribution over spots against targets from image similarity only
    expected = F.cross_entropy((spot @ img.T).T, F.softmax(img @ img.T, dim=-1))
    torch.testing.assert_close(heclip_loss(img, spot), expected)
    mean_sim = (img @ img.T + spot @ spot.T) / 2
    bleep = (
        F.cross_entropy(spot @ img.T, F.softmax(mean_sim, -1))
        + F.cross_entropy(img @ spot.T, F.softmax(mean_sim.T, -1))
    ) / 2
    torch.testing.assert_close(bleep_loss(img, spot), bleep)
    # swapping the roles of the two modalities leaves BLEEP unchanged (symmetric) but not HECLIP
    torch.testing.assert_close(bleep_loss(img, spot), bleep_loss(spot, img))
    assert not torch.isclose(heclip_loss(img, spot), heclip_loss(spot, img))


def test_retrieval_chunked_equals_unchunked_and_variants():
    rng = np.random.default_rng(0)
    q, r, e = rng.normal(size=(37, 8)), rng.normal(size=(90, 8)), rng.normal(size=(90, 5))
    full = retrieve(q, r, e, k=10, chunk=10_000)
    np.testing.assert_allclose(retrieve(q, r, e, k=10, chunk=7), full, rtol=1e-5, atol=1e-6)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    top = np.argsort(-(qn @ rn.T), axis=1)[:, :10]
    np.testing.assert_allclose(full, e[top].mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(retrieve(q, r, e, method="simple"), e[top[:, 0]], rtol=1e-5, atol=1e-6)
    idx, w = topk_weights(qn @ rn.T, 10, "weighted")
    np.testing.assert_allclose(w.sum(axis=1), 1, rtol=1e-6)
    best = np.take_along_axis(qn @ rn.T, idx, 1).argmax(axis=1)
    assert (w[np.arange(len(w)), best] >= w.max(axis=1) - 1e-7).all()  # nearest spot weighs most


def test_ridge_probe_is_hest_recipe():
    model = ridge_probe(n_features=512, n_genes=50, n_train=1000)
    assert [name for name, _ in model.steps] == ["scale", "pca", "ridge"]
    assert model.named_steps["pca"].n_components == 256
    ridge = model.named_steps["ridge"]
    assert ridge.solver == "lsqr" and not ridge.fit_intercept and ridge.alpha == pytest.approx(100 / (256 * 50))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    y = x[:, :3] @ rng.normal(size=(3, 4)) + 5.0
    pred, _ = fit_predict(x[:200], y[:200], x[200:])
    assert np.corrcoef(pred[:, 0], y[200:, 0])[0, 1] > 0.99 and abs(pred.mean() - 5.0) < 0.5


def _paired(n=240, d=16, g=12, seed=0):
    """Features and expression driven by one shared latent: retrieval should recover expression."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    x = np.concatenate([z @ rng.normal(size=(3, d)), 0.1 * rng.normal(size=(n, d))], axis=1).astype(np.float32)
    y = (z @ rng.normal(size=(3, g)) + 0.2 * rng.normal(size=(n, g))).astype(np.float32)
    return x, y


@pytest.mark.parametrize("kind", ["heclip", "bleep"])
def test_contrastive_models_learn_the_pairing(kind):
    x, y = _paired()
    cfg = ContrastiveConfig(epochs=20, batch_size=64, top_k=10)
    model, history = train_contrastive(kind, torch.as_tensor(x[:180]), y[:180], cfg, image_dim=x.shape[1])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    pred = predict(model, torch.as_tensor(x[:180]), y[:180], torch.as_tensor(x[180:]))
    r = [np.corrcoef(pred[:, j], y[180:, j])[0, 1] for j in range(y.shape[1])]
    assert np.mean(r) > 0.6
    # an untrained model's retrieval is far worse: the training, not the features alone, does this
    untrained = ImageExpressionModel(kind, x.shape[1], y.shape[1], cfg).eval()
    base = predict(untrained, torch.as_tensor(x[:180]), y[:180], torch.as_tensor(x[180:]))
    if kind == "bleep":  # BLEEP retrieves image -> expression embeddings: random heads do not align them
        r0 = [np.corrcoef(base[:, j], y[180:, j])[0, 1] for j in range(y.shape[1])]
        assert np.mean(r) > np.nanmean(r0) + 0.3


def test_raw_expression_embedding_is_heclip_hvg_model():
    cfg = ContrastiveConfig(expr_embedding="raw")
    model = ImageExpressionModel("heclip", 16, 12, cfg)
    assert model.spot_head is None and model.image_head.norm.normalized_shape == (12,)
    y = torch.randn(3, 12)
    assert torch.equal(model.embed_expression(y), y)


def test_last_blocks_tuning_freezes_earlier_blocks():
    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
            self.head = torch.nn.Linear(4, 4)

    tower = Tower()
    model = ImageExpressionModel("heclip", 4, 5, ContrastiveConfig(tune="last_blocks", tune_blocks=1), tower)
    _set_trainable(model, model.cfg)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.2.weight", "blocks.2.bias", "head.weight", "head.bias"}


def test_last_blocks_of_an_open_clip_image_tower():
    from slidesnake.features.encoders import load_encoder

    encoder = load_encoder("tiny-clip")
    model = ImageExpressionModel("heclip", encoder.spec.dim, 5, ContrastiveConfig(tune="last_blocks"), encoder)
    _set_trainable(model, model.cfg)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert {"model.visual.proj", "model.visual.ln_post.weight"} <= trainable
    assert any(".visual.transformer.resblocks.1." in n for n in trainable)
    assert not any(".resblocks.0." in n or "conv1" in n or "positional" in n for n in trainable)
    assert all(n.startswith("model.visual.") for n in trainable)  # the text tower stays frozen
