"""Tissue GeoJSON: RFC 7946 polygons (holes as interior rings, right-hand rule), read back without shapely."""

from __future__ import annotations

import json

import numpy as np
from _slide_fixtures import tissue_slide, write_aperio

from slidesnake.tissue.geojson import read_tissue_geojson, signed_area, tissue_geojson, write_tissue_geojson
from slidesnake.tissue.segmentation import SegmentationParams, segment_slide
from slidesnake.tissue.stage import run_tissue_stage

# a clockwise (in x, y) square with a counter-clockwise hole: both must be flipped on output
SQUARE_CW = [[0, 0], [0, 100], [100, 100], [100, 0]]
HOLE_CCW = [[40, 40], [60, 40], [60, 60], [40, 60]]


def _record(contours, holes):
    return {"slide_id": "s", "status": "ok", "mpp": 0.25, "contours": contours, "holes": holes}


def test_rings_are_closed_oriented_and_holes_are_interior_rings():
    collection = tissue_geojson(_record([SQUARE_CW, [[200, 200], [260, 200], [230, 260]]], [[HOLE_CCW], []]))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2
    first = collection["features"][0]
    assert first["type"] == "Feature" and first["geometry"]["type"] == "Polygon"
    assert first["properties"]["classification"]["name"] == "Tissue" and first["properties"]["tissue_id"] == 0
    exterior, hole = first["geometry"]["coordinates"]
    assert exterior[0] == exterior[-1] and hole[0] == hole[-1] and len(exterior) == 5
    assert signed_area(exterior) == 100 * 100 and signed_area(hole) == -20 * 20  # RFC 7946 §3.1.6
    assert sorted(map(tuple, exterior[:-1])) == sorted(map(tuple, SQUARE_CW))  # same vertices
    assert len(collection["features"][1]["geometry"]["coordinates"]) == 1  # no holes: one ring
    assert json.loads(json.dumps(collection)) == collection  # plain JSON types only


def test_segmented_slide_round_trips_to_the_level0_polygons(tmp_path):
    image, boxes = tissue_slide()
    slide = write_aperio(tmp_path / "s.svs", image)
    record = segment_slide(slide, SegmentationParams(a_t=0.5, a_h=0.5), slide_id="s")
    assert record["status"] == "ok" and len(record["contours"]) == 2
    write_tissue_geojson(tmp_path / "s.geojson", record)
    contours, holes = read_tissue_geojson(tmp_path / "s.geojson")  # json only, no shapely
    assert len(contours) == len(record["contours"]) and [len(h) for h in holes] == [len(h) for h in record["holes"]]
    for ours, back, our_holes, back_holes in zip(record["contours"], contours, record["holes"], holes):
        assert back.dtype == np.int64
        # the same level-0 vertices (possibly reversed) and the same area
        assert sorted(map(tuple, back.tolist())) == sorted(map(tuple, ours))
        assert abs(signed_area(back)) == abs(signed_area(np.asarray(ours)))
        for h_ours, h_back in zip(our_holes, back_holes):
            assert sorted(map(tuple, h_back.tolist())) == sorted(map(tuple, h_ours))
    # the big block's hole is the glass box drawn at (1280, 1024)-(1792, 1536) level-0, within a seg pixel
    big = max(range(len(contours)), key=lambda i: abs(signed_area(contours[i])))
    (hole,) = holes[big]
    x0, y0, x1, y1 = boxes["hole"]
    assert abs(hole[:, 0].min() - x0) <= 64 and abs(hole[:, 1].max() - y1) <= 64
    area_mm2 = sum(abs(signed_area(c)) - sum(abs(signed_area(h)) for h in hs) for c, hs in zip(contours, holes))
    assert np.isclose(area_mm2 * 0.25**2 / 1e6, record["tissue_area_mm2"], rtol=1e-6)


def test_tissue_stage_writes_the_geojson_beside_the_json(tmp_path):
    image, _ = tissue_slide()
    slide = write_aperio(tmp_path / "s.svs", image)
    coords = {5: tmp_path / "5x.h5", 20: tmp_path / "20x.h5"}
    record = run_tissue_stage(
        slide, "s", SegmentationParams(a_t=0.5), tmp_path / "s.json", coords, tmp_path / "qc.png",
        tissue_geojson=tmp_path / "s.geojson",
    )  # fmt: skip
    data = json.loads((tmp_path / "s.geojson").read_text())
    assert data["slide_id"] == "s" and len(data["features"]) == len(record["contours"]) > 0
