"""Tests for the synthetic demo cohort: sheet, real-format slides, class separation, tables."""

from __future__ import annotations

import re

import cv2
import numpy as np
import openslide
import pandas as pd
import pytest

from slidesnake.data.demo import (
    CLASSES,
    GENES,
    DemoConfig,
    DemoConfigError,
    UnknownDemoSlideError,
    demo_clinical,
    demo_mutations,
    demo_sheet,
    render_demo_slide,
    write_demo_slide,
    write_demo_tables,
)

SMALL = DemoConfig(size=2048)  # 0.5 mm x 0.5 mm slides: same morphology, 16x fewer pixels
SHEET_COLUMNS = ["slide_id", "case_id", "path", "label", "md5", "source", "scan"]
CLINICAL_COLUMNS = [
    "case_id", "submitter_id", "project_id", "age_years", "sex", "race", "primary_diagnosis",
    "tissue_or_organ_of_origin", "ajcc_stage", "ajcc_t", "ajcc_n", "ajcc_m", "tumor_grade",
    "vital_status", "os_days", "os_event",
]  # fmt: skip
# Ruifrok & Johnston stain OD vectors: an independent yardstick for "how much haematoxylin".
RUIFROK = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105]])
CLAM_MIN_TISSUE_MM2 = 100 * 0.128**2


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> pd.DataFrame:
    """Every slide of the small cohort written to disk once."""
    sheet = demo_sheet(SMALL, tmp_path_factory.mktemp("demo"))
    for row in sheet.itertuples():
        write_demo_slide(SMALL, row.slide_id, row.path)
    return sheet


def _saturation(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]


def _rgb(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    return np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))


def _haematoxylin_in_tissue(rgb: np.ndarray) -> float:
    """Mean haematoxylin OD over tissue pixels by least-squares colour deconvolution."""
    tissue = _saturation(rgb) > 20
    od = -np.log(np.maximum(rgb[tissue].astype(float), 1.0) / 242.0)
    conc, *_ = np.linalg.lstsq(RUIFROK.T, od.T, rcond=None)
    return float(conc[0].mean())


# ------------------------------------------------------------------------------------------ sheet


def test_sheet_has_the_documented_cohort_shape(tmp_path):
    sheet = demo_sheet(DemoConfig(), tmp_path)
    assert list(sheet.columns) == SHEET_COLUMNS
    assert all(sheet[c].map(type).eq(str).all() for c in SHEET_COLUMNS)
    assert len(sheet) == 21 and sheet["slide_id"].is_unique
    assert sheet["case_id"].nunique() == 10
    assert sheet["scan"].value_counts().to_dict() == {"40x": 19, "20x": 1, "empty": 1}
    patients = sheet.drop_duplicates("case_id")
    assert patients["label"].value_counts().to_dict() == {"solid": 5, "glandular": 5}
    assert set(sheet["label"]) == set(CLASSES)
    assert (sheet["path"] == [str(tmp_path / f"{s}.svs") for s in sheet["slide_id"]]).all()
    assert sheet["slide_id"].str.fullmatch(r"DEMO-\d{4}-S\d").all()
    assert (sheet["slide_id"].str[:9] == sheet["case_id"]).all()
    assert (sheet["md5"] == "").all() and (sheet["source"] == "demo").all()
    # the empty slide is an extra slide of an existing patient and carries that patient's label
    empty = sheet[sheet["scan"] == "empty"].iloc[0]
    siblings = sheet[(sheet["case_id"] == empty["case_id"]) & (sheet["scan"] != "empty")]
    assert len(siblings) == 2 and set(siblings["label"]) == {empty["label"]}
    assert empty["slide_id"].endswith("-S3")


def test_sheet_is_deterministic_and_seed_dependent(tmp_path):
    pd.testing.assert_frame_equal(demo_sheet(DemoConfig(), tmp_path), demo_sheet(DemoConfig(), tmp_path))
    other = demo_sheet(DemoConfig(seed=1), tmp_path)
    base = demo_sheet(DemoConfig(), tmp_path)
    assert not (other[["label", "scan"]].equals(base[["label", "scan"]]))


def test_sheet_scales_with_config(tmp_path):
    sheet = demo_sheet(DemoConfig(n_patients=3, slides_per_patient=1), tmp_path)
    assert len(sheet) == 4 and sheet["case_id"].nunique() == 3
    assert set(sheet["label"]) == set(CLASSES)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [(DemoConfig(n_patients=1), "demo.n_patients"), (DemoConfig(slides_per_patient=0), "demo.slides_per_patient"),
     (DemoConfig(size=1001), "demo.size"), (DemoConfig(size=256), "demo.size")],
)  # fmt: skip
def test_invalid_config_names_the_key(cfg, key):
    with pytest.raises(DemoConfigError, match=re.escape(key)):
        demo_sheet(cfg, "slides")


def test_unknown_slide_id_is_rejected(tmp_path):
    with pytest.raises(UnknownDemoSlideError, match="DEMO-0099-S1"):
        write_demo_slide(SMALL, "DEMO-0099-S1", tmp_path / "x.svs")
    assert not (tmp_path / "x.svs").exists()


# ----------------------------------------------------------------------------------------- slides


def test_render_is_deterministic_and_slides_differ():
    a, mpp = render_demo_slide(SMALL, "DEMO-0002-S1")
    b, _ = render_demo_slide(SMALL, "DEMO-0002-S1")
    assert mpp == 0.25 and a.shape == (2048, 2048, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    sibling, _ = render_demo_slide(SMALL, "DEMO-0002-S2")
    reseeded, _ = render_demo_slide(DemoConfig(size=2048, seed=7), "DEMO-0002-S1")
    assert np.abs(a.astype(int) - sibling).mean() > 10
    assert not np.array_equal(a, reseeded)


def test_written_file_is_byte_identical_and_matches_render(small_cohort, tmp_path):
    row = small_cohort.iloc[0]
    again = write_demo_slide(SMALL, row["slide_id"], tmp_path / "again.svs")
    assert again.read_bytes() == open(row["path"], "rb").read()
    rendered, _ = render_demo_slide(SMALL, row["slide_id"])
    with openslide.OpenSlide(row["path"]) as slide:
        level0 = _rgb(slide, 0)
    assert np.abs(level0.astype(int) - rendered).mean() < 3  # only JPEG loss


def test_openslide_reads_40x_aperio_with_pyramid_and_thumbnail(small_cohort):
    row = small_cohort[small_cohort["scan"] == "40x"].iloc[0]
    with openslide.OpenSlide(row["path"]) as slide:
        props = slide.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "aperio"
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert float(props[openslide.PROPERTY_NAME_OBJECTIVE_POWER]) == 40
        assert slide.level_count >= 3
        assert slide.level_dimensions[:3] == ((2048, 2048), (512, 512), (128, 128))
        assert slide.level_downsamples[:3] == pytest.approx((1, 4, 16))
        assert "thumbnail" in slide.associated_images


def test_native_20x_slide_covers_the_same_area(small_cohort):
    row20 = small_cohort[small_cohort["scan"] == "20x"].iloc[0]
    row40 = small_cohort[small_cohort["scan"] == "40x"].iloc[0]
    with openslide.OpenSlide(row20["path"]) as s20, openslide.OpenSlide(row40["path"]) as s40:
        mpp20 = float(s20.properties[openslide.PROPERTY_NAME_MPP_X])
        mpp40 = float(s40.properties[openslide.PROPERTY_NAME_MPP_X])
        assert mpp20 == pytest.approx(0.5)
        assert float(s20.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER]) == 20
        assert s20.dimensions == (1024, 1024)
        assert s20.dimensions[0] * mpp20 == pytest.approx(s40.dimensions[0] * mpp40)
        assert s20.level_count >= 3 and "thumbnail" in s20.associated_images
        assert (_saturation(_rgb(s20, 1)) > 20).mean() > 0.3  # it has tissue


def test_empty_slide_is_glass_and_tissue_slides_are_not(small_cohort):
    for row in small_cohort.itertuples():
        with openslide.OpenSlide(row.path) as slide:
            rgb = _rgb(slide, 1)
        # CLAM's view: saturation at a 64x downsample, median blurred, threshold 8
        small = cv2.resize(rgb, (rgb.shape[1] // 16, rgb.shape[0] // 16), interpolation=cv2.INTER_AREA)
        sat = cv2.medianBlur(_saturation(small), 7)
        if row.scan == "empty":
            assert sat.max() < 8, row.slide_id
            assert 230 < rgb.mean() < 250
        else:
            tissue = _saturation(rgb) > 8
            assert 0.3 < tissue.mean() < 0.7, row.slide_id
            # median blur drops JPEG chroma ringing around tissue edges, as CLAM's segmentation does
            border = cv2.medianBlur(tissue.astype(np.uint8), 5)
            border[4:-4, 4:-4] = 0
            assert not border.any(), f"{row.slide_id}: tissue touches the slide border"


def test_classes_separate_on_haematoxylin(small_cohort):
    stats: dict[str, list[float]] = {c: [] for c in CLASSES}
    for row in small_cohort[small_cohort["scan"] != "empty"].itertuples():
        with openslide.OpenSlide(row.path) as slide:
            stats[row.label].append(_haematoxylin_in_tissue(_rgb(slide, 1)))
    assert len(stats["solid"]) >= 8 and len(stats["glandular"]) >= 8
    # every solid slide carries clearly more haematoxylin than every glandular slide
    assert min(stats["solid"]) > 1.3 * max(stats["glandular"]), stats


def test_full_size_slide_has_an_island_above_the_default_minimum_area(tmp_path):
    cfg = DemoConfig()
    sheet = demo_sheet(cfg, tmp_path)
    row = sheet[sheet["scan"] == "20x"].iloc[0]  # the native-20x slide: full physical size, 1/4 of the pixels
    write_demo_slide(cfg, row["slide_id"], row["path"])
    with openslide.OpenSlide(row["path"]) as slide:
        assert slide.dimensions == (4096, 4096)
        level = 2
        mpp = float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) * slide.level_downsamples[level]
        tissue = (cv2.medianBlur(_saturation(_rgb(slide, level)), 7) > 8).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(tissue)
    largest_mm2 = stats[1:, cv2.CC_STAT_AREA].max() * mpp**2 / 1e6
    assert largest_mm2 > 1.1 * CLAM_MIN_TISSUE_MM2


# ----------------------------------------------------------------------------------------- tables


def test_clinical_table_has_one_row_per_case_with_typed_columns():
    clinical = demo_clinical(DemoConfig())
    sheet = demo_sheet(DemoConfig(), "s")
    assert list(clinical.columns) == CLINICAL_COLUMNS
    assert sorted(clinical["case_id"]) == sorted(sheet["case_id"].unique())
    assert clinical["case_id"].is_unique and (clinical["submitter_id"] == clinical["case_id"]).all()
    assert (clinical["project_id"] == "DEMO").all()
    for col in ("age_years", "os_days", "os_event"):
        assert clinical[col].dtype == np.int64, col
    assert set(clinical["os_event"]) <= {0, 1} and (clinical["os_days"] > 0).all()
    assert ((clinical["vital_status"] == "Dead") == (clinical["os_event"] == 1)).all()
    assert set(clinical["ajcc_stage"]) <= {"Stage I", "Stage II", "Stage III", "Stage IV"}
    assert ((clinical["ajcc_m"] == "M1") == (clinical["ajcc_stage"] == "Stage IV")).all()
    assert clinical["ajcc_t"].str.fullmatch(r"T[1-4]").all() and clinical["tumor_grade"].str.fullmatch(r"G[1-3]").all()
    pd.testing.assert_frame_equal(clinical, demo_clinical(DemoConfig()))


def test_survival_is_worse_for_solid_cases():
    cfg = DemoConfig(n_patients=200)
    labels = demo_sheet(cfg, "s").drop_duplicates("case_id").set_index("case_id")["label"]
    clinical = demo_clinical(cfg).set_index("case_id")
    solid = clinical[labels.reindex(clinical.index) == "solid"]
    glandular = clinical[labels.reindex(clinical.index) == "glandular"]
    assert solid["os_event"].mean() > glandular["os_event"].mean() + 0.2
    assert solid["os_days"].median() < 0.7 * glandular["os_days"].median()


def test_mutation_table_is_wide_and_tp53_follows_the_class():
    cfg = DemoConfig()
    mutations = demo_mutations(cfg)
    expected = ["case_id", "tmb", "n_nonsilent"] + [f"{g}{s}" for g in GENES for s in ("", "__class", "__exon")]
    assert list(mutations.columns) == expected
    assert len(mutations) == 10 and mutations["case_id"].is_unique
    assert mutations["tmb"].dtype == np.float64 and (mutations["tmb"] > 0).all()
    assert mutations["n_nonsilent"].dtype == np.int64
    assert (mutations["n_nonsilent"] >= mutations[list(GENES)].sum(axis=1)).all()
    for gene in GENES:
        assert mutations[gene].dtype == np.int8 and set(mutations[gene]) <= {0, 1}
        hit = mutations[gene] == 1
        assert (mutations.loc[hit, f"{gene}__class"] != "").all()
        assert (mutations.loc[~hit, f"{gene}__class"] == "").all()
        assert (mutations.loc[~hit, f"{gene}__exon"] == "").all()
        for exon in mutations.loc[hit, f"{gene}__exon"]:
            number, total = map(int, exon.split("/"))
            assert 1 <= number <= total
    big = DemoConfig(n_patients=200)
    labels = demo_sheet(big, "s").drop_duplicates("case_id").set_index("case_id")["label"]
    wide = demo_mutations(big).set_index("case_id")
    agreement = ((wide["TP53"] == 1) == (labels.reindex(wide.index) == "solid")).mean()
    assert agreement > 0.8
    assert 0.05 < wide["KRAS"].mean() < 0.5  # others random, neither absent nor universal


def test_write_demo_tables_round_trips(tmp_path):
    cfg = DemoConfig()
    paths = tmp_path / "slides.tsv", tmp_path / "clinical.parquet", tmp_path / "mutations.parquet"
    write_demo_tables(cfg, *paths, slide_dir=tmp_path / "svs")
    sheet = pd.read_csv(paths[0], sep="\t", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(sheet, demo_sheet(cfg, tmp_path / "svs"))
    pd.testing.assert_frame_equal(pd.read_parquet(paths[1]), demo_clinical(cfg))
    pd.testing.assert_frame_equal(pd.read_parquet(paths[2]), demo_mutations(cfg))
    assert not list(tmp_path.glob(".tmp-*"))


# ----------------------------------------------------------------------------- the harder demo (issue 10)

# md5 of render_demo_slide(DemoConfig(n_patients=4, size=2048, seed=3), ...) before the hard-demo knobs
# existed: the defaults must keep the default demo byte-identical.
_GOLDEN_MD5 = {"DEMO-0001-S1": "2656b4dddd04a3b4d28ba8b2264220d5", "DEMO-0002-S2": "ac2a9ca60eac3b2cd9a70e48a822d740",
               "DEMO-0004-S1": "6c14e854b10b77604705784d85fe5d77"}  # fmt: skip


def test_hard_demo_knobs_leave_the_default_demo_byte_identical():
    import hashlib

    cfg = DemoConfig(n_patients=4, slides_per_patient=2, size=2048, seed=3)
    for slide_id, md5 in _GOLDEN_MD5.items():
        assert hashlib.md5(render_demo_slide(cfg, slide_id)[0].tobytes()).hexdigest() == md5, slide_id


def test_label_noise_flips_the_recorded_label_not_the_slide():
    from slidesnake.data.demo import _true_classes

    cfg = DemoConfig(n_patients=20, slides_per_patient=1, size=2048, label_noise=0.1)
    sheet = demo_sheet(cfg, "s").drop_duplicates("case_id")
    truth = _true_classes(cfg)
    flipped = [c for c, label in zip(sheet["case_id"], sheet["label"]) if truth[c] != label]
    assert len(flipped) == 2
    clean = demo_sheet(DemoConfig(n_patients=20, slides_per_patient=1, size=2048), "s").drop_duplicates("case_id")
    assert (clean["label"] == [truth[c] for c in clean["case_id"]]).all()
    # the slide of a flipped patient shows its true class: identical to the noise-free render
    slide = sheet.loc[sheet["case_id"] == flipped[0], "slide_id"].iloc[0]
    noisy, _ = render_demo_slide(cfg, slide)
    assert np.array_equal(
        noisy, render_demo_slide(DemoConfig(n_patients=20, slides_per_patient=1, size=2048), slide)[0]
    )


def test_foci_cover_the_configured_share_of_tissue():
    from slidesnake.data.demo import _foci_mask, _tissue_mask

    rng = np.random.default_rng(0)
    mask = _tissue_mask(rng, 4096)
    foci = _foci_mask(rng, mask, 0.07, px=2.0)  # a 2 mm slide at 20x
    share = foci.sum() / (mask > 0).sum()
    assert 0.07 <= share < 0.10 and not (foci & (mask == 0)).any()
    n_foci, _ = cv2.connectedComponents(foci.astype(np.uint8))
    assert n_foci - 1 >= 3  # several small foci, not one blob


def test_focal_slides_differ_from_the_background_only_in_a_minority_of_tissue():
    cfg = DemoConfig(size=2048, focus_fraction=0.1)
    solid = [s for s, label in zip(demo_sheet(cfg, "s")["slide_id"], demo_sheet(cfg, "s")["label"])
             if label == "solid"][0]  # fmt: skip
    focal, _ = render_demo_slide(cfg, solid)
    full, _ = render_demo_slide(SMALL, solid)
    # dense dark nuclei (the solid morphology) fill the whole tissue at focus_fraction 1, ~10% of it at 0.1
    tissue_focal, tissue_full = _saturation(focal) > 20, _saturation(full) > 20
    dark = lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) < 110  # noqa: E731
    assert dark(focal)[tissue_focal].mean() < 0.4 * dark(full)[tissue_full].mean()


@pytest.mark.parametrize(
    ("cfg", "key"),
    [(DemoConfig(focus_fraction=0.0), "demo.focus_fraction"), (DemoConfig(stain_jitter=-1), "demo.stain_jitter"),
     (DemoConfig(label_noise=0.5), "demo.label_noise")],
)  # fmt: skip
def test_invalid_hard_demo_knobs_name_the_key(cfg, key):
    with pytest.raises(DemoConfigError, match=re.escape(key)):
        demo_sheet(cfg, "slides")
