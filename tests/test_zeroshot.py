"""Zero-shot scoring (CONCH / MI-Zero protocol): class weights, top-K means, prompt sets, smoothing,
the predictions contract, K chosen only on validation slides, and the bad-input errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from slidesnake.features.text import PromptsError, embed_prompts
from slidesnake.models.vl.prompts import check_class_prompts, read_prompt_dictionary
from slidesnake.models.vl.zeroshot import (
    FULL_SET,
    TextBank,
    ZeroShotError,
    ZeroShotParams,
    check_text_tower,
    class_weights,
    predictions_table,
    prompt_sets,
    read_slide_features,
    read_text_bank,
    reorder,
    score_cohort,
    smooth_logits,
    topk_means,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _bank(n_classes: int = 2, n_syn: int = 3, n_tpl: int = 4, dim: int = 16, seed: int = 0) -> TextBank:
    rng = np.random.default_rng(seed)
    rows = [(c, s, t) for c in range(n_classes) for s in range(n_syn) for t in range(n_tpl)]
    centres = _unit(rng.normal(size=(n_classes, dim)))
    emb = _unit(np.stack([centres[c] + 0.3 * rng.normal(size=dim) for c, _, _ in rows]))
    return TextBank(
        emb.astype(np.float32),
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        [f"c{k}" for k in range(n_classes)],
        20.0,
        "test",
        "text.h5",
    )


def test_class_weight_is_the_renormalised_mean_of_normalised_prompt_embeddings():
    bank = _bank()
    weights = class_weights(bank)
    for k in range(2):
        rows = bank.embeddings[bank.class_index == k]
        expected = _unit(_unit(rows).mean(axis=0))
        np.testing.assert_allclose(weights[k], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(weights, axis=1), 1.0, atol=1e-6)


def test_topk_means_match_a_sort_for_every_k_and_cap_k_at_the_tile_count():
    logits = np.random.default_rng(1).normal(size=(37, 3))
    ks = (1, 5, 10, 50, 100)
    got = topk_means(logits, ks)
    for i, k in enumerate(ks):
        expected = np.sort(logits, axis=0)[::-1][: min(k, 37)].mean(axis=0)
        np.testing.assert_allclose(got[i], expected, atol=1e-12)


def test_prompt_sets_take_one_synonym_per_class_and_a_shared_template_subset_with_fixed_seeds():
    bank = _bank(n_syn=3, n_tpl=5)
    sets = prompt_sets(bank, n_sets=50, seed=7)
    assert len(sets) == 50
    sizes = set()
    for mask in sets:
        templates = []
        for k in range(2):
            rows = mask & (bank.class_index == k)
            assert len(np.unique(bank.synonym_index[rows])) == 1  # one synonym per class
            templates.append(sorted(bank.template_index[rows]))
        assert templates[0] == templates[1] and len(templates[0]) >= 1  # same templates for every class
        sizes.add(len(templates[0]))
    assert len(sizes) > 1  # random subset sizes, U{1..T}
    again = prompt_sets(bank, n_sets=50, seed=7)
    assert all((a == b).all() for a, b in zip(sets, again))
    other = prompt_sets(bank, n_sets=50, seed=8)
    assert any((a != b).any() for a, b in zip(sets, other))


def test_knn_smoothing_averages_a_tile_with_its_spatial_neighbours():
    xs, ys = np.meshgrid(np.arange(7) * 256, np.arange(7) * 256)
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    logits = np.zeros((49, 2))
    logits[24, 0] = 9.0  # one outlier tile in the middle of the grid
    smoothed = smooth_logits(logits, coords, k=8)
    assert smoothed[24, 0] == pytest.approx(1.0)  # its 3x3 neighbourhood, itself included
    assert smoothed[23, 0] == pytest.approx(1.0)  # a neighbour sees it
    assert smoothed[0, 0] == pytest.approx(0.0)  # a far corner is untouched
    np.testing.assert_array_equal(smooth_logits(logits, coords, k=0), logits)


def _write_features(path, features, coords=None, **attrs):
    with h5py.File(path, "w") as f:
        f["features"] = features.astype(np.float32)
        f["coords"] = coords if coords is not None else np.zeros((len(features), 2), np.int64)
        f.attrs.update({"encoder": "test", **attrs})


def _cohort(tmp_path, bank, n_slides=8, n_tiles=30, seed=0):
    """Slides whose tiles mostly point away from every class, a few tiles close to the slide's class."""
    rng = np.random.default_rng(seed)
    weights = class_weights(bank)
    features, rows = {}, []
    for i in range(n_slides):
        target = i % 2
        background = rng.normal(size=(n_tiles, weights.shape[1]))
        background[:5] = weights[target] * 4 + 0.3 * rng.normal(size=(5, weights.shape[1]))
        path = tmp_path / f"S{i}.h5"
        _write_features(path, background, coords=rng.integers(0, 10_000, (n_tiles, 2)))
        features[f"S{i}"] = str(path)
        rows.append({"slide_id": f"S{i}", "case_id": f"P{i // 2}", "label": bank.classes[target], "target": target})
    return features, pd.DataFrame(rows)


def _folds(labels, n_folds=2):
    rows = []
    for fold in range(n_folds):
        for i, slide in enumerate(labels["slide_id"]):
            split = "test" if i % n_folds == fold else ("val" if i % 4 == (fold + 1) % 4 else "train")
            rows.append({"slide_id": slide, "case_id": labels["case_id"][i], "fold": fold, "split": split})
    return pd.DataFrame(rows)


def test_every_slide_is_scored_once_in_its_test_fold_with_the_trained_models_contract(tmp_path):
    bank = _bank()
    features, labels = _cohort(tmp_path, bank)
    scores = score_cohort(features, bank, ZeroShotParams(top_k=5, n_prompt_sets=10), tmp_path / "tiles.h5")
    assert set(scores["prompt_set"]) == {FULL_SET, *range(10)}
    assert set(scores["k"]) == {1, 5, 10, 50, 100}
    folds = _folds(labels)
    pred = predictions_table(scores, labels, folds, bank.classes, 5)
    assert list(pred.columns[:4]) == ["slide_id", "case_id", "fold", "split"]
    assert pred["slide_id"].is_unique and set(pred["slide_id"]) == set(labels["slide_id"])
    assert (pred["split"] == "test").all()
    test_fold = folds[folds["split"] == "test"].set_index("slide_id")["fold"]
    assert (pred.set_index("slide_id")["fold"] == test_fold.loc[pred["slide_id"]].to_numpy()).all()
    probs = pred[["prob_c0", "prob_c1"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert (probs.argmax(1) == pred["target"].to_numpy()).all()  # the few aligned tiles decide the slide
    with h5py.File(tmp_path / "tiles.h5") as f:
        assert f["S0/logits"].shape == (30, 2) and json.loads(f.attrs["classes"]) == bank.classes
    # an encoder aligned on fold 1's train patients (CPLIP) is scored on fold 1's test slides only
    held_out = predictions_table(scores, labels, folds, bank.classes, 5, only_fold=1)
    expected = set(folds.query("fold == 1 and split == 'test'")["slide_id"])
    assert set(held_out["slide_id"]) == expected and (held_out["fold"] == 1).all()
    with pytest.raises(ZeroShotError, match="fold 7 has no test slide"):
        predictions_table(scores, labels, folds, bank.classes, 5, only_fold=7)


def test_top_k_mean_finds_a_small_focus_that_the_mean_of_all_tiles_misses(tmp_path):
    bank = _bank()
    features, labels = _cohort(tmp_path, bank, n_tiles=400)
    scores = score_cohort(features, bank, ZeroShotParams(top_k=5, n_prompt_sets=0))
    by_k = {k: part.set_index("slide_id") for k, part in scores.groupby("k")}
    margin = {k: (part["prob_c1"] - part["prob_c0"]).to_numpy() for k, part in by_k.items()}
    sign = np.where(labels["target"].to_numpy() == 1, 1, -1)
    assert (margin[5] * sign > 0).all()
    assert np.abs(margin[5]).mean() > 3 * np.abs(margin[100]).mean()


def test_k_is_chosen_per_fold_on_validation_slides_never_on_test(tmp_path):
    bank = _bank()
    features, labels = _cohort(tmp_path, bank)
    scores = score_cohort(features, bank, ZeroShotParams(n_prompt_sets=0))
    folds = _folds(labels)
    # Make K=1 perfect and every other K wrong on validation slides, the reverse on test slides.
    val = set(folds.loc[(folds["fold"] == 0) & (folds["split"] == "val"), "slide_id"])
    test = set(folds.loc[(folds["fold"] == 0) & (folds["split"] == "test"), "slide_id"])
    truth = labels.set_index("slide_id")["target"]
    for i, row in scores.iterrows():
        right = row["k"] == 1 if row["slide_id"] in val else row["k"] != 1
        p = 0.9 if right == (truth[row["slide_id"]] == 1) else 0.1
        scores.loc[i, ["prob_c0", "prob_c1"]] = [1 - p, p]
    pred = predictions_table(scores, labels, folds, bank.classes, "val")
    assert set(pred.loc[pred["fold"] == 0, "k"]) == {1}
    assert set(pred.loc[pred["fold"] == 0, "slide_id"]) == test


def test_bank_classes_follow_the_task_order_and_must_match(tmp_path):
    bank = _bank()
    swapped = reorder(bank, ["c1", "c0"])
    np.testing.assert_array_equal(swapped.class_index, 1 - bank.class_index)
    with pytest.raises(ZeroShotError, match="not the task's classes"):
        reorder(bank, ["c0", "other"])


def test_unprojected_or_mismatched_features_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "S.h5"
    _write_features(path, np.ones((3, 16)), projected=False)
    with pytest.raises(ZeroShotError, match=r"S\.h5.*projected=False"):
        read_slide_features(path, 16)
    _write_features(path, np.ones((3, 8)), projected=True)
    with pytest.raises(ZeroShotError, match=r"S\.h5.*D=8.*D=16"):
        read_slide_features(path, 16)


def test_image_only_encoders_are_refused_for_zero_shot():
    with pytest.raises(ZeroShotError, match="image-only"):
        check_text_tower("UNI")
    check_text_tower("demo-clip")


@pytest.mark.parametrize(
    "prompts, match",
    [
        ({"solid": ["a"], "glandular": ["b"], "other": ["c"]}, "class 'other' is not a class of the task"),
        ({"solid": ["a"]}, "class 'glandular' has no prompts"),
        ({"solid": {"synonyms": []}, "glandular": ["b"]}, "'solid' has an empty 'synonyms'"),
        ({"solid": [], "glandular": ["b"]}, "'solid' has an empty prompt list"),
        ({"solid": {"templates": ["an image."]}, "glandular": ["b"]}, "'solid'.*no CLASSNAME"),
    ],
)
def test_bad_prompt_files_name_the_file_and_the_class(tmp_path, prompts, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(prompts))
    with pytest.raises(PromptsError, match=f"bad.json.*{match}"):
        check_class_prompts(path, ["glandular", "solid"])


def test_the_shipped_prompt_files_fit_the_demo_task(repo_root):
    assert check_class_prompts(repo_root / "config/prompts/demo.json", ["glandular", "solid"])
    bags = read_prompt_dictionary(repo_root / "config/prompts/demo_dictionary.json", ["glandular", "solid"])
    assert all(len(bag) >= 8 for bag in bags.values())


def test_text_h5_records_synonym_and_template_of_every_prompt(tmp_path):
    prompts = {"a": {"synonyms": ["x", "y"], "templates": ["CLASSNAME.", "an image of CLASSNAME."]}, "b": ["z"]}
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    embed_prompts("tiny-clip", tmp_path / "p.json", tmp_path / "t.h5", device="cpu")
    bank = read_text_bank(tmp_path / "t.h5")
    assert bank.classes == ["a", "b"]
    assert bank.synonym_index.tolist() == [0, 0, 1, 1, 0]
    assert bank.template_index.tolist() == [0, 1, 0, 1, 0]
    assert bank.logit_scale > 1


def _reference_scores(features, bank, params):
    """Straightforward per slide, per prompt set, per K: the scores score_cohort must reproduce."""
    masks = [None] + prompt_sets(bank, params.n_prompt_sets, params.seed)
    ks = sorted(set(params.ks) | {params.top_k})
    rows, tiles = [], {}
    for slide_id, path in features.items():
        with h5py.File(path) as f:
            feats, coords = f["features"][()].astype(np.float64), f["coords"][()]
        if not len(feats):
            continue
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        for s, mask in enumerate(masks):
            logits = feats @ class_weights(bank, mask).T.astype(np.float64)
            if params.smoothing_k:
                dist = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
                logits = logits[np.argsort(dist, axis=1)[:, : params.smoothing_k + 1]].mean(axis=1)
            if s == 0:
                tiles[slide_id] = logits
            for k in ks:
                top = np.sort(logits, axis=0)[::-1][: min(k, len(logits))].mean(axis=0) * bank.logit_scale
                prob = np.exp(top - top.max()) / np.exp(top - top.max()).sum()
                rows.append({"slide_id": slide_id, "prompt_set": s - 1, "k": k, "prob_c0": prob[0], "prob_c1": prob[1]})
    return pd.DataFrame(rows), tiles


@pytest.mark.parametrize("smoothing_k", [0, 3])
def test_blocked_prefetching_scorer_matches_a_per_slide_per_prompt_set_reference(tmp_path, monkeypatch, smoothing_k):
    """Slides share blocks (one matmul each), blocks are reused while the reader fills the next, a slide
    larger than a block gets its own, an empty slide is skipped: none of it changes a score."""
    import slidesnake.models.vl.zeroshot as zeroshot

    monkeypatch.setattr(zeroshot, "CHUNK_TILES", 64)
    bank = _bank(dim=16)
    rng = np.random.default_rng(3)
    features = {}
    for i, n in enumerate([30, 20, 40, 0, 150, 7, 64, 1, 33, 25]):
        path = tmp_path / f"S{i}.h5"
        _write_features(path, rng.normal(size=(n, 16)), coords=rng.permutation(10_000)[: 2 * n].reshape(n, 2))
        features[f"S{i}"] = str(path)
    params = ZeroShotParams(top_k=5, n_prompt_sets=6, seed=1, smoothing_k=smoothing_k)
    got = score_cohort(features, bank, params, tmp_path / "tiles.h5")
    expected, tiles = _reference_scores(features, bank, params)
    assert "S3" not in set(got["slide_id"])  # no patches: not scored
    key = ["slide_id", "prompt_set", "k"]
    merged = expected.merge(got, on=key, suffixes=("", "_got"), validate="one_to_one")
    assert len(merged) == len(expected) == len(got)
    for column in ("prob_c0", "prob_c1"):
        np.testing.assert_allclose(merged[f"{column}_got"], merged[column], rtol=1e-4, atol=1e-6)
    with h5py.File(tmp_path / "tiles.h5") as f:
        for slide_id, logits in tiles.items():
            np.testing.assert_allclose(f[f"{slide_id}/logits"][()], logits, atol=1e-5)


def test_a_feature_block_stays_intact_while_the_reader_fills_the_next(tmp_path):
    """The prefetching scorer multiplies block k while block k + 1 is read: reading k + 1 must not touch k."""
    from slidesnake.models.vl.zeroshot import read_feature_chunks

    rng = np.random.default_rng(4)
    features = {}
    for i in range(9):
        _write_features(tmp_path / f"S{i}.h5", rng.normal(size=(20, 16)))
        features[f"S{i}"] = str(tmp_path / f"S{i}.h5")
    previous = None
    chunks = read_feature_chunks(features, 16, chunk_tiles=45)
    for chunk in chunks:
        assert chunk.offsets == [0, 20, 40] or chunk.slide_ids == ["S8"]  # two 20-tile slides fit in 45 rows
        if previous is not None:
            np.testing.assert_array_equal(previous[0].features, previous[1])
        for i, slide_id in enumerate(chunk.slide_ids):
            expected = read_slide_features(features[slide_id], 16)[0]
            np.testing.assert_array_equal(chunk.features[chunk.offsets[i] : chunk.offsets[i + 1]], expected)
        previous = (chunk, chunk.features.copy())
