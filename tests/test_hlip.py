"""HLIP (issue 14): clinical captions, tile sampling, grouped CLIP loss and tuning, retrieval metrics."""

from __future__ import annotations

import logging
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from slidesnake.data.captions import (
    FIELD_NAMES,
    case_caption,
    case_sentences,
    clinical_captions,
    count_overlong,
    field_query_captions,
    log_truncation,
    stage_captions,
    survival_bins,
)
from slidesnake.data.demo import DemoConfig, demo_clinical
from slidesnake.evaluate.retrieval import (
    chunked_topk,
    compare_groups,
    f1_at_k,
    high_malignancy,
    majority_vote,
    malignancy_ratios,
    recall_at_k,
    survival_cindex,
)
from slidesnake.features.tiles import read_tiles, sample_indices, sample_tiles, tile_count
from slidesnake.io.atomic import write_h5
from slidesnake.train.contrastive import clip_loss, grouped_clip_loss
from tests._slide_fixtures import glass, write_aperio

FULL = {
    "case_id": "C1",
    "primary_diagnosis": "Adenocarcinoma, NOS",
    "tissue_or_organ_of_origin": "Upper lobe, lung",
    "ajcc_stage": "Stage IIA",
    "ajcc_t": "T2a",
    "ajcc_n": "N1",
    "ajcc_m": "M0",
    "tumor_grade": "G2",
    "age_years": 63.4,
    "sex": "female",
    "race": "white",
    "vital_status": "Dead",
    "os_days": 412.0,
}


# ------------------------------------------------------------------------------------------ captions


def test_caption_has_all_twelve_fields_in_plain_words():
    text = case_caption(FULL)
    assert len(FIELD_NAMES) == 12
    for words in ("adenocarcinoma, nos", "upper lobe, lung", "stage II.", "T2", "N1", "M0", "G2",
                  "60 to 69 years", "female", "white", "dead", "412 days"):  # fmt: skip
        assert words in text, words
    assert text.count(".") >= 12


def test_missing_fields_are_omitted_never_written_as_unknown():
    row = {**FULL, "ajcc_stage": "Not Reported", "race": None, "ajcc_m": "MX", "os_days": math.nan, "tumor_grade": "--"}
    text = case_caption(row)
    assert "stage" not in text and "race" not in text and "metastasis" not in text and "survival" not in text
    assert "grade" not in text and "not reported" not in text.lower() and "nan" not in text
    assert "adenocarcinoma" in text


def test_captions_are_deterministic_and_bad_cases_logged(caplog):
    clinical = pd.DataFrame([FULL, {"case_id": "C2", "sex": "Not Reported", "race": "--"}, {**FULL, "case_id": "C3"}])
    with caplog.at_level(logging.WARNING):
        a = clinical_captions(clinical, ["C1", "C2", "C3", "C9"])
    b = clinical_captions(clinical.iloc[::-1].reset_index(drop=True), ["C1", "C2", "C3", "C9"])
    pd.testing.assert_frame_equal(a, b)
    assert list(a["case_id"]) == ["C1", "C3"]
    assert "C9" in caplog.text and "no clinical record" in caplog.text
    assert "C2" in caplog.text and "all 12" in caplog.text
    assert int(a.loc[0, "n_fields"]) == 12


def test_query_sets_stage_and_survival_bins():
    caps = clinical_captions(demo_clinical(DemoConfig()))
    queries = field_query_captions(caps)
    assert set(queries["field"]) == set(FIELD_NAMES) - {"survival"}
    assert all(queries.loc[queries["field"] == "sex", "value"].isin(["female", "male"]))
    assert list(stage_captions()["stage"]) == ["I", "II", "III", "IV"]
    assert stage_captions()["caption"].str.contains("stage IV").iloc[-1]
    bins = survival_bins([0, 100, 500])
    assert list(bins["days"]) == [50.0, 300.0, 750.0]
    assert "more than 500 days" in bins["caption"].iloc[-1]
    with pytest.raises(ValueError, match="vl.hlip.survival_bins"):
        survival_bins([0, 500, 100])


def test_overlong_captions_are_counted_and_logged(caplog):
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    texts = ["short.", case_caption(FULL)]
    assert count_overlong(texts, tok) == 1
    with caplog.at_level(logging.WARNING):
        assert log_truncation(texts, tok, "clinical captions") == 1
    assert "1 of 2 clinical captions" in caplog.text and "truncated" in caplog.text


# ------------------------------------------------------------------------------------------- tiles


def test_sample_indices_fixed_seed_and_bounded():
    a = sample_indices(1000, 64, seed=3, slide_id="S1")
    assert len(a) == 64 and len(set(a)) == 64 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, sample_indices(1000, 64, seed=3, slide_id="S1"))
    assert not np.array_equal(a, sample_indices(1000, 64, seed=4, slide_id="S1"))
    assert not np.array_equal(a, sample_indices(1000, 64, seed=3, slide_id="S2"))
    assert np.array_equal(sample_indices(10, 64, 0, "S1"), np.arange(10))


def test_sample_tiles_reads_pixels_at_target_mpp(tmp_path):
    # 40x slide (0.25 um/px): a 20x patch of 256 px covers 512 level-0 px; blocks of one colour each
    image = glass(2048, 1024)
    colours = {}
    for j, x in enumerate(range(0, 2048, 512)):
        colours[(x, 0)] = (10 * j + 20, 100, 200 - 10 * j)
        image[0:512, x : x + 512] = colours[(x, 0)]
    slide = write_aperio(tmp_path / "s.svs", image, mpp=0.25)
    coords = np.array(list(colours), dtype=np.int64)
    write_h5(tmp_path / "c.h5", {"coords": coords}, {"patch_size": 256, "status": "ok"})
    n = sample_tiles(slide, tmp_path / "c.h5", tmp_path / "t.h5", slide_id="S", tiles_per_slide=3, seed=1)
    assert n == 3 and tile_count(tmp_path / "t.h5") == 3
    tiles, got = read_tiles(tmp_path / "t.h5")
    assert tiles.dtype == np.uint8 and tiles.shape == (3, 256, 256, 3)
    for tile, (x, y) in zip(tiles, got.tolist()):
        assert np.abs(tile.astype(int) - colours[(x, y)]).max() <= 2
    with h5py.File(tmp_path / "t.h5") as f:
        assert f.attrs["mpp"] == 0.5 and f.attrs["n_patches"] == 4
    # zero patches -> a file with zero tiles, and a warning
    write_h5(tmp_path / "e.h5", {"coords": np.zeros((0, 2), np.int64)}, {"patch_size": 256})
    assert sample_tiles(slide, tmp_path / "e.h5", tmp_path / "te.h5", slide_id="E", tiles_per_slide=3) == 0
    with h5py.File(tmp_path / "te.h5") as f:
        assert f["tiles"].shape == (0, 256, 256, 3) and f.attrs["status"] == "no_tiles"


# -------------------------------------------------------------------------------------------- loss


def test_grouped_clip_loss_is_clip_loss_for_distinct_groups_and_ignores_copies():
    torch.manual_seed(0)
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    assert torch.allclose(grouped_clip_loss(img, txt, 10.0, torch.arange(6)), clip_loss(img, txt, 10.0))
    # two tiles of one case share its caption: the targets are uniform over the case's rows, so the loss
    # at perfect alignment sits at its lower bound (the targets' entropy, ln2 / 2 here) with zero gradient
    cap = torch.eye(3)
    txt = cap[[0, 0, 1, 2]]
    img = txt.clone().requires_grad_(True)
    loss = grouped_clip_loss(img, txt, 50.0, torch.tensor([0, 0, 1, 2]))
    assert loss.item() == pytest.approx(math.log(2) / 2, abs=1e-4)
    loss.backward()
    assert img.grad.abs().max() < 1e-4
    # a tile moved towards another case's caption costs more
    worse = grouped_clip_loss(cap[[0, 1, 1, 2]], txt, 50.0, torch.tensor([0, 0, 1, 2]))
    assert float(worse) > float(loss) + 1.0


# ---------------------------------------------------------------------------------------- retrieval


def test_chunked_topk_matches_full_sort():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(37, 5)).astype(np.float32), rng.normal(size=(101, 5)).astype(np.float32)
    s, i = chunked_topk(q, g, 7, query_chunk=8, gallery_chunk=13)
    full = q @ g.T
    assert np.array_equal(i, np.argsort(-full, axis=1)[:, :7])
    assert np.allclose(s, np.take_along_axis(full, i, 1), atol=1e-5)


def test_recall_at_k_on_hand_made_similarity():
    # 3 queries over 4 gallery items; gallery groups a,b,c,a
    topk = np.array([[0, 1, 2], [2, 1, 0], [1, 2, 3]])  # ranked gallery indices per query
    r = recall_at_k(topk, np.array(["a", "b", "a"]), np.array(["a", "b", "c", "a"]), (1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0)}


def test_f1_at_k_mean_and_ci_over_repeats_not_max():
    rng = np.random.default_rng(0)
    slides = np.repeat(np.arange(10), 200)
    truth = slides % 2
    predicted = np.where(rng.random(len(truth)) < 0.7, truth, 1 - truth)  # 70% correct tiles
    table = f1_at_k(predicted, truth, slides, ks=(10, 100), repeats=200, seed=0).set_index("k")
    assert table.loc[100, "mean"] == pytest.approx(0.7, abs=0.02)
    assert table.loc[10, "ci_low"] < table.loc[10, "mean"] < table.loc[10, "ci_high"]
    # fewer tiles per draw -> wider interval; the mean is not the max over repeats
    assert table.loc[10, "ci_high"] - table.loc[10, "ci_low"] > table.loc[100, "ci_high"] - table.loc[100, "ci_low"]
    assert table.loc[10, "mean"] < table.loc[10, "ci_high"]
    again = f1_at_k(predicted, truth, slides, ks=(10, 100), repeats=200, seed=0).set_index("k")
    pd.testing.assert_frame_equal(table, again)


def test_majority_vote_and_survival_cindex():
    votes = majority_vote(np.array([2, 2, 1, 0, 0, 3]), np.array(["a", "a", "a", "b", "b", "b"]))
    assert votes.to_dict() == {"a": 2, "b": 0}
    days, events = np.array([100.0, 400.0, 900.0, 2000.0]), np.array([1, 1, 0, 1])
    assert survival_cindex(days * 2, days, events) == pytest.approx(1.0)
    assert survival_cindex(-days, days, events) == pytest.approx(0.0)
    assert math.isnan(survival_cindex(days, days, np.zeros(4)))


def test_malignancy_ratio_excludes_background_and_tests_groups():
    probs = np.array(
        [[0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.45, 0.35], [0.3, 0.2, 0.3, 0.2], [0.7, 0.1, 0.1, 0.1], [0, 0, 0, 1.0]]
    )
    background = np.array([False, False, False, False, True])
    high = high_malignancy(probs, background, threshold=0.6)
    # P(III) + P(IV): 0.8 and 0.8 are high (the second split between III and IV), 0.5 and 0.2 are not;
    # the last is background
    assert high.tolist() == [True, True, False, False, False]
    ratios = malignancy_ratios(high, background, np.array(["s"] * 5))
    assert ratios["s"] == pytest.approx(2 / 4)
    rng = np.random.default_rng(0)
    low_group, high_group = rng.uniform(0, 0.3, 12), rng.uniform(0.5, 0.9, 12)
    out = compare_groups(low_group, high_group)
    assert out["welch_t"] > 0 and out["welch_p"] < 1e-4 and out["mwu_p"] < 1e-4
    assert math.isnan(compare_groups(low_group[:1], high_group)["welch_p"])


def test_field_order_puts_chosen_fields_first():
    text = case_caption(FULL, ["stage", "primary_diagnosis"])
    assert text == "The tumour is stage II. The primary diagnosis is adenocarcinoma, nos."
    with pytest.raises(ValueError, match="vl.hlip.fields"):
        case_caption(FULL, ["tumour_size"])


# ------------------------------------------------------------------------------------------ tuning


def _tile_file(path, colour, n=8, size=32):
    rng = np.random.default_rng(int(sum(colour)))
    tiles = np.clip(np.asarray(colour)[None, None, None] + rng.integers(-8, 9, (n, size, size, 3)), 0, 255)
    write_h5(path, {"tiles": tiles.astype(np.uint8), "coords": np.zeros((n, 2), np.int64)}, {"status": "ok"})
    return str(path)


def test_tune_hlip_learns_pairs_from_tile_files_and_writes_a_loadable_encoder(tmp_path, caplog):
    from slidesnake.features.encoders import load_encoder
    from slidesnake.train.contrastive import hlip_params, tune_hlip

    colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40), (40, 220, 220), (220, 40, 220)]
    words = ["red", "green", "blue", "yellow", "cyan", "magenta"]
    tiles = {f"S{i}": _tile_file(tmp_path / f"S{i}.h5", c) for i, c in enumerate(colours)}
    write_h5(tmp_path / "E.h5", {"tiles": np.zeros((0, 32, 32, 3), np.uint8), "coords": np.zeros((0, 2))})
    tiles["E"] = str(tmp_path / "E.h5")
    tiles["X"] = _tile_file(tmp_path / "X.h5", (128, 128, 128))
    cases = {s: f"C{s}" for s in tiles}
    captions = {f"CS{i}": f"The tumour is {w}." for i, w in enumerate(words)} | {"CE": "The tumour is empty."}
    splits = {"S0": "train", "S1": "train", "S2": "train", "S3": "train", "S4": "val", "S5": "val"}
    splits |= {"E": "train", "X": "train"}
    with caplog.at_level(logging.WARNING):
        history = tune_hlip(
            "tiny-clip", tiles, cases, captions, splits, str(tmp_path / "enc"),
            batch_size=8, params=hlip_params(epochs=4, lr=1e-3, patience=4, device="cpu"),
        )  # fmt: skip
    assert "zero tiles" in caplog.text and "E" in caplog.text
    assert "no clinical caption" in caplog.text and "X" in caplog.text
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all("val_loss" in row for row in history)
    tuned = load_encoder(str(tmp_path / "enc"))
    assert tuned.spec.name == "hlip-tiny-clip"
    base = load_encoder("tiny-clip")
    assert not torch.equal(tuned.model.visual.conv1.weight, base.model.visual.conv1.weight)
    record = __import__("json").loads((tmp_path / "enc" / "training.json").read_text())
    assert record["pairs"]["train"] == 32 and record["pairs"]["cases"] == 4
    assert record["params"]["lr"] == 1e-3 and record["params"]["weight_decay"] == 0.0


def test_case_sentences_are_worded_as_the_retrieval_queries():
    captions = clinical_captions(pd.DataFrame([FULL]))
    sentences = case_sentences(captions)["C1"]
    assert stage_captions().set_index("stage").loc["II", "caption"] in sentences
    queries = set(field_query_captions(captions)["caption"])
    assert queries <= set(sentences)  # every single-field query of this case is one of its sentences
    bins = survival_bins([0, 365, 730, 1825])
    survival = [t for t in sentences if t.startswith("The overall survival")]
    assert len(survival) == 1 and survival[0] in set(bins["caption"])  # binned, as the survival queries
    assert len(sentences) == captions.loc[0, "n_fields"]


def test_caption_views_sample_sentences_and_shared_texts_are_one_group():
    from slidesnake.train.contrastive import CaptionViews, HlipError

    paragraphs = ["P0", "P1", "P2"]
    sentences = [["stage IV", "male"], ["stage IV", "female"], []]
    views, pool = CaptionViews.build(paragraphs, sentences, 1.0)
    assert pool == ["P0", "P1", "P2", "stage IV", "male", "female"]  # each distinct text once
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([views.pick(torch.tensor([0, 1, 2]), gen) for _ in range(400)])
    assert set(picks[:, 0].tolist()) == {3, 4} and set(picks[:, 1].tolist()) == {3, 5}
    assert set(picks[:, 2].tolist()) == {2}  # no sentences: the paragraph
    assert 0.4 < (picks[:, 0] == 3).float().mean() < 0.6  # uniform over the case's sentences
    half, _ = CaptionViews.build(paragraphs, sentences, 0.5)
    shown = torch.stack([half.pick(torch.tensor([0]), gen) for _ in range(400)])[:, 0]
    assert 0.4 < (shown == 0).float().mean() < 0.6
    never, _ = CaptionViews.build(paragraphs, sentences, 0.0)
    assert never.pick(torch.tensor([2, 0, 1]), gen).tolist() == [2, 0, 1]
    with pytest.raises(HlipError, match="vl.hlip.sentence_prob"):
        CaptionViews.build(paragraphs, sentences, 1.5)


def test_hlip_step_loss_makes_cases_that_show_one_sentence_each_others_positives():
    """Two cases showing "stage IV" in one batch: one group (a positive pair), not two negatives."""
    from slidesnake.features.encoders import load_encoder
    from slidesnake.train.contrastive import CaptionViews, ClipTowers, hlip_step_loss

    towers = ClipTowers(load_encoder("tiny-clip"))
    views, pool = CaptionViews.build(["P0", "P1"], [["The tumour is stage IV."], ["The tumour is stage IV."]], 1.0)
    tokens = towers.tokenize(pool)
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    cases = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        loss = hlip_step_loss(towers, tokens, (images, cases), torch.device("cpu"), views)
        image = towers.image(towers.encoder.preprocess(images))
        text = towers.text({"input_ids": tokens["input_ids"][[2, 2, 2, 2]]})
        expected = grouped_clip_loss(image, text, towers.logit_scale(), torch.tensor([2, 2, 2, 2]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_tuning_with_sentence_views_retrieves_tiles_by_one_field(tmp_path):
    """Sentence views put the single-field query in distribution: tiles of stage-I cases (reddish)
    and stage-IV cases (bluish), whose paragraphs carry per-case filler around the stage, are told
    apart by the two stage queries alone after tuning."""
    from slidesnake.features.encoders import load_encoder
    from slidesnake.train.contrastive import hlip_params, tune_hlip

    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    tiles, captions, sentences, splits = {}, {}, {}, {}
    for i, word in enumerate(words):
        stage = "I" if i % 2 == 0 else "IV"
        colour = (200, 60 + 10 * i, 60) if stage == "I" else (60, 60 + 10 * i, 200)
        tiles[f"S{i}"] = _tile_file(tmp_path / f"S{i}.h5", colour)
        own = [f"The patient is number {word}.", f"The tumour is stage {stage}.", f"The site is {words[9 - i]}."]
        captions[f"CS{i}"], sentences[f"CS{i}"] = " ".join(own), own
        splits[f"S{i}"] = "val" if i >= 8 else "train"
    cases = {s: f"C{s}" for s in tiles}
    tune_hlip(
        "tiny-clip", tiles, cases, captions, splits, str(tmp_path / "enc"), batch_size=16,
        params=hlip_params(epochs=8, lr=1e-3, patience=8, device="cpu"), sentences=sentences, sentence_prob=0.5,
    )  # fmt: skip
    record = __import__("json").loads((tmp_path / "enc" / "training.json").read_text())
    assert record["sentence_views"] == {"prob": 0.5, "distinct_sentences": 22}
    tuned = load_encoder(str(tmp_path / "enc"))
    rng = np.random.default_rng(99)
    with torch.no_grad():
        queries = tuned.encode_text(["The tumour is stage I.", "The tumour is stage IV."]).numpy()
        for k, colour in enumerate([(200, 100, 60), (60, 100, 200)]):
            x = np.clip(np.asarray(colour)[None, None, None] + rng.integers(-8, 9, (20, 32, 32, 3)), 0, 255)
            emb = tuned.encode_image(tuned.preprocess(torch.from_numpy(x.astype(np.uint8)))).numpy()
            assert ((emb @ queries.T).argmax(axis=1) == k).mean() >= 0.9


def test_tune_hlip_without_pairs_is_a_clear_error(tmp_path):
    from slidesnake.train.contrastive import HlipError, tune_hlip

    tiles = {"S0": _tile_file(tmp_path / "S0.h5", (200, 10, 10))}
    with pytest.raises(HlipError, match="no training pairs"):
        tune_hlip("tiny-clip", tiles, {"S0": "C0"}, {}, {"S0": "train"}, str(tmp_path / "enc"))


def test_run_retrieval_from_pipeline_files_writes_metrics_maps_and_the_comparison(tmp_path):
    """The retrieval rule's path end to end: sheet, clinical table, captions, folds and per-slide
    features files in -> metrics.csv, maps.h5 and the figure out; metrics files -> the comparison."""
    from slidesnake.data.captions import write_clinical_captions
    from slidesnake.data.demo import demo_sheet
    from slidesnake.evaluate.retrieval import RetrievalParams, comparison_table, run_retrieval
    from slidesnake.features.encoders import load_encoder

    cfg = DemoConfig(n_patients=8, slides_per_patient=1)
    sheet = demo_sheet(cfg, tmp_path / "slides")
    sheet.to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    demo_clinical(cfg).to_parquet(tmp_path / "clinical.parquet")
    write_clinical_captions(str(tmp_path / "clinical.parquet"), str(tmp_path / "captions.parquet"),
                            str(tmp_path / "slides.tsv"))  # fmt: skip
    splits = ["test" if i % 2 else "train" for i in range(len(sheet))]
    folds = sheet[["slide_id", "case_id"]].assign(fold=0, split=splits)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    dim = load_encoder("tiny-clip", "cpu").spec.dim
    rng = np.random.default_rng(0)
    files = []
    for slide_id in sheet["slide_id"]:
        path = tmp_path / "features" / f"{slide_id}.h5"
        coords = np.stack(np.meshgrid(np.arange(4), np.arange(3)), -1).reshape(-1, 2) * 512
        write_h5(path, {"features": rng.normal(size=(len(coords), dim)).astype(np.float32), "coords": coords})
        files.append(str(path))
    out = tmp_path / "eval" / "metrics.csv"
    metrics = run_retrieval(
        "tiny-clip", files, str(tmp_path / "captions.parquet"), str(tmp_path / "clinical.parquet"),
        str(tmp_path / "folds.csv"), str(tmp_path / "slides.tsv"), 0, str(out),
        str(tmp_path / "eval" / "maps.h5"), str(tmp_path / "eval" / "maps.png"),
        params=RetrievalParams(f1_ks=(5,), recall_ks=(1, 5), repeats=5), device="cpu",
    )  # fmt: skip
    assert (tmp_path / "eval" / "maps.png").stat().st_size > 0
    with h5py.File(tmp_path / "eval" / "maps.h5") as f:
        assert len(f.keys()) > 0
    written = pd.read_csv(out)
    assert len(written) == len(metrics) and "index" not in written.columns and "Unnamed: 0" not in written.columns
    assert {"image_to_text_recall", "text_to_image_recall", "stage_accuracy", "survival_cindex"} <= set(
        written["metric"]
    )
    recall = written[written["metric"] == "image_to_text_recall"].set_index("k")["value"]
    assert 0 <= recall.loc[1] <= recall.loc[5] <= 1
    both = comparison_table([str(out), str(out)])  # two metrics files in, one row per metric out
    assert len(both) == len(written) and "tiny-clip" in both.columns


def test_wise_ensemble_interpolates_float_weights_and_keeps_integer_buffers():
    from slidesnake.train.contrastive import HlipError, tune_hlip, wise_ensemble

    torch.manual_seed(0)
    model = torch.nn.BatchNorm1d(3)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(4.0)
        model.num_batches_tracked.fill_(7)
    wise_ensemble(model, base, 0.25)
    assert torch.allclose(model.weight, base["weight"] + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    assert int(model.num_batches_tracked) == 7
    with pytest.raises(HlipError, match="vl.hlip.wise_alpha"):
        tune_hlip("tiny-clip", {}, {}, {}, {}, "unused", wise_alpha=0.0)
