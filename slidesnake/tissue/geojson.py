"""Tissue contours as GeoJSON (RFC 7946): what QuPath opens and TRIDENT writes (``contours_geojson/``).

One ``Feature`` per tissue region, a ``Polygon`` whose first ring is the contour and whose further
rings are its holes, in level-0 pixel coordinates (like our JSON). Rings are closed and follow
RFC 7946's right-hand rule as computed on the coordinates (exterior signed area > 0, holes < 0),
the orientation shapely's ``orient(polygon, 1.0)`` gives. The tissue JSON stays the record of truth;
this file is the same polygons for other tools.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from slidesnake.io.atomic import write_json

TISSUE_CLASS = {"name": "Tissue", "color": [0, 160, 0]}


class TissueGeoJSONError(ValueError):
    """A tissue GeoJSON is not a FeatureCollection of Polygons."""


def signed_area(ring: np.ndarray) -> float:
    """Shoelace signed area of a ring (closed or open): > 0 counter-clockwise in (x, y) coordinates."""
    pts = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _ring(points: Any, exterior: bool) -> list[list[int]]:
    """A closed ring of int positions, oriented exterior-positive / hole-negative."""
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    if len(pts) > 1 and (pts[0] == pts[-1]).all():
        pts = pts[:-1]
    if (signed_area(pts) > 0) != exterior:
        pts = pts[::-1]
    return np.concatenate([pts, pts[:1]]).tolist()


def tissue_geojson(record: dict) -> dict:
    """GeoJSON FeatureCollection of a tissue record's contours (holes as interior rings)."""
    features = []
    for i, (contour, holes) in enumerate(zip(record["contours"], record["holes"])):
        if len(contour) < 3:
            continue
        rings = [_ring(contour, True)] + [_ring(h, False) for h in holes if len(h) >= 3]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {"tissue_id": i, "objectType": "annotation", "classification": TISSUE_CLASS},
            }
        )
    return {
        "type": "FeatureCollection",
        "features": features,
        # foreign members (RFC 7946 §6.1): which slide and frame the coordinates belong to
        "slide_id": record["slide_id"],
        "coordinates_frame": "level-0 pixels",
        "mpp": record.get("mpp"),
        "status": record["status"],
    }


def write_tissue_geojson(path: str | os.PathLike, record: dict) -> None:
    """Write :func:`tissue_geojson` of ``record`` atomically (an empty collection for a non-ok slide)."""
    write_json(path, tissue_geojson(record))


def read_tissue_geojson(path: str | os.PathLike) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Contours and their holes (open rings, int64 (K, 2)) from a tissue GeoJSON, with plain ``json``."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise TissueGeoJSONError(f"{path}: cannot read GeoJSON ({exc}); rerun the tissue stage") from exc
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise TissueGeoJSONError(f"{path}: not a GeoJSON FeatureCollection")
    contours, holes = [], []
    for feature in data.get("features", []):
        geometry = feature.get("geometry") or {}
        if geometry.get("type") != "Polygon":
            raise TissueGeoJSONError(f"{path}: geometry type {geometry.get('type')!r}; expected Polygon")
        rings = [np.asarray(r, dtype=np.int64).reshape(-1, 2)[:-1] for r in geometry["coordinates"]]
        contours.append(rings[0])
        holes.append(rings[1:])
    return contours, holes
