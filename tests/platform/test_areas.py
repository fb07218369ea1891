"""The shared area registry: H3 cells of points, exact point-in-polygon, cell covers, bbox specs.

shapely is the independent oracle here (the product code does not use it).
"""

from __future__ import annotations

import copy
import importlib.resources
import itertools
import json
import math
import random
from fractions import Fraction
from typing import Any

import h3
import numpy as np
import pytest
import shapely
from shapely.geometry import Point, shape

from cityos_platform.areas import (
    AREA_CELL_RESOLUTION,
    MAX_BBOX_SIDE_DEG,
    Area,
    AreaDefinitionError,
    AreaRegistry,
    BBox,
    cell_for,
)
from cityos_platform.errors import InvalidArgument, NotFound

DEMO_NAMES = ("city", "rongdong", "rongxi", "qidong", "xiongan-station", "lakeshore")
DISTRICTS = tuple(name for name in DEMO_NAMES if name != "city")
M_PER_DEG_LAT = 111_320.0


def _demo_document() -> dict[str, Any]:
    resource = importlib.resources.files("cityos_platform") / "data" / "areas" / "xiongan-demo.geojson"
    document: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return document


def _demo_geometry(name: str) -> dict[str, Any]:
    for feature in _demo_document()["features"]:
        if feature["properties"]["name"] == name:
            geometry: dict[str, Any] = feature["geometry"]
            return geometry
    raise AssertionError(f"no demo feature {name}")


def _rings(geometry: dict[str, Any]) -> list[list[list[float]]]:
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return [ring for polygon in polygons for ring in polygon]


def _km2(geometry: dict[str, Any]) -> float:
    """Area by a local equirectangular projection: good to a fraction of a percent for a few km."""
    g = shape(geometry)
    return g.area * (M_PER_DEG_LAT / 1000) ** 2 * math.cos(math.radians(g.centroid.y))


def _near_edge_points(geometry: dict[str, Any], rng: random.Random) -> list[tuple[float, float]]:
    """(lat, lng) points on the vertices and within a few metres either side of every edge."""
    points: list[tuple[float, float]] = []
    for ring in _rings(geometry):
        for (x1, y1), (x2, y2) in itertools.pairwise(ring):
            points.append((y1, x1))  # the vertex itself: on the boundary, so inside
            cos_lat = math.cos(math.radians(y1))
            # The edge's unit normal in metres, then back to degrees.
            ex, ey = (x2 - x1) * M_PER_DEG_LAT * cos_lat, (y2 - y1) * M_PER_DEG_LAT
            length = math.hypot(ex, ey)
            nx, ny = -ey / length, ex / length
            for _ in range(12):
                t = rng.random()
                for metres in (-5.0, -2.0, -0.5, -0.05, 0.05, 0.5, 2.0, 5.0):
                    lng = x1 + (x2 - x1) * t + nx * metres / (M_PER_DEG_LAT * cos_lat)
                    lat = y1 + (y2 - y1) * t + ny * metres / M_PER_DEG_LAT
                    points.append((lat, lng))
    return points


def _random_points(bbox: BBox, count: int, rng: random.Random) -> list[tuple[float, float]]:
    """Points over the area's bbox grown by 15% on every side."""
    pad_lat = (bbox.max_lat - bbox.min_lat) * 0.15
    pad_lng = (bbox.max_lng - bbox.min_lng) * 0.15
    return [
        (
            rng.uniform(bbox.min_lat - pad_lat, bbox.max_lat + pad_lat),
            rng.uniform(bbox.min_lng - pad_lng, bbox.max_lng + pad_lng),
        )
        for _ in range(count)
    ]


def _shapely_inside(geometry: dict[str, Any], points: list[tuple[float, float]]) -> set[int]:
    lats = np.array([lat for lat, _ in points])
    lngs = np.array([lng for _, lng in points])
    covered = shapely.covers(shape(geometry), shapely.points(lngs, lats))
    return {index for index, inside in enumerate(covered) if inside}


def _overlap_only(area: Area) -> set[str]:
    """H3's own overlap fill, without the extra ring the registry adds."""
    cells: set[str] = set()
    for polygon in area.polygons:
        outer, *holes = ([(lat, lng) for lng, lat in ring[:-1]] for ring in polygon)
        cells.update(h3.h3shape_to_cells_experimental(h3.LatLngPoly(outer, *holes), 9, contain="overlap"))
    return cells


# --- cells -------------------------------------------------------------------------------------------


def test_cell_for_is_the_resolution_9_cell_of_the_point():
    assert AREA_CELL_RESOLUTION == 9
    cell = cell_for(39.0, 115.95)
    assert h3.get_resolution(cell) == 9
    assert h3.is_valid_cell(cell)
    # The cell really holds the point, and a point ~1 km away is in another cell.
    assert cell == h3.latlng_to_cell(39.0, 115.95, 9)
    assert cell_for(39.01, 115.95) != cell
    assert h3.get_resolution(cell_for(39.0, 115.95, 7)) == 7


@pytest.mark.parametrize(
    ("lat", "lng", "fields"),
    [
        (90.5, 115.95, ["location.latitude"]),
        (-91.0, 115.95, ["location.latitude"]),
        (math.nan, 115.95, ["location.latitude"]),
        (39.0, 180.5, ["location.longitude"]),
        (39.0, math.inf, ["location.longitude"]),
        (math.inf, -math.inf, ["location.latitude", "location.longitude"]),
    ],
)
def test_cell_for_refuses_impossible_coordinates_naming_the_field(lat, lng, fields):
    with pytest.raises(InvalidArgument) as caught:
        cell_for(lat, lng)
    assert [v.field for v in caught.value.violations] == fields


def test_cell_for_uses_the_callers_field_prefix_and_accepts_the_extremes():
    with pytest.raises(InvalidArgument) as caught:
        cell_for(100.0, 0.0, field="spot.location")
    assert [v.field for v in caught.value.violations] == ["spot.location.latitude"]
    assert "-90 to 90" in caught.value.violations[0].description
    for lat, lng in ((90.0, 180.0), (-90.0, -180.0), (0, 0)):
        assert h3.is_valid_cell(cell_for(lat, lng))


# --- the filter against the oracle ---------------------------------------------------------------------


@pytest.mark.req("CORE-4")
@pytest.mark.parametrize("name", DEMO_NAMES)
def test_cells_then_contains_select_exactly_the_points_inside(name):
    area = AreaRegistry.default().get(name)
    geometry = _demo_geometry(name)
    rng = random.Random(f"areas-{name}")
    random_points = _random_points(area.bbox, 3000, rng)
    edge_points = _near_edge_points(geometry, rng)
    points = random_points + edge_points

    selected = {
        i
        for i, (lat, lng) in enumerate(points)
        if cell_for(lat, lng) in area.cells and area.contains(lat, lng)
    }
    expected = _shapely_inside(geometry, points)

    wrong = sorted(selected ^ expected)
    assert not wrong, f"{len(wrong)} points disagree with shapely, e.g. {[points[i] for i in wrong[:5]]}"
    # Not vacuous: both sides of the boundary are well represented, near the edges too.
    edge_indices = set(range(len(random_points), len(points)))
    assert len(expected) > 500
    assert len(expected & edge_indices) > 200
    assert len(edge_indices - expected) > 200
    # The prefilter does real work: many points outside the area are not even in its cells.
    assert sum(cell_for(lat, lng) not in area.cells for lat, lng in random_points) > 300


def test_the_cover_holds_the_cell_of_a_point_the_overlap_fill_misses():
    """H3 assigns points to cells on its own projection but fills polygons with straight-edged hexagons;
    a polygon hugging a cell edge from outside can hold a point of that cell. The extra ring covers it."""
    centre = h3.latlng_to_cell(39.0, 115.95, 9)
    found = 0
    for cell in h3.grid_disk(centre, 2):
        boundary = h3.cell_to_boundary(cell)  # (lat, lng)
        cx = sum(lng for _, lng in boundary) / len(boundary)
        cy = sum(lat for lat, _ in boundary) / len(boundary)
        for (y1, x1), (y2, x2) in zip(boundary, boundary[1:] + boundary[:1], strict=True):
            dx, dy = x2 - x1, y2 - y1
            length = math.hypot(dx, dy)
            nx, ny = dy / length, -dx / length
            if nx * (cx - x1) + ny * (cy - y1) > 0:
                nx, ny = -nx, -ny  # the outward normal
            # A 20 m strip whose inner side runs 1e-10 degrees (~0.01 mm) outside the hexagon's edge.
            near, far = 1e-10, 2e-4
            strip = [
                [x1 + nx * near, y1 + ny * near],
                [x2 + nx * near, y2 + ny * near],
                [x2 + nx * far, y2 + ny * far],
                [x1 + nx * far, y1 + ny * far],
            ]
            geometry = {"type": "Polygon", "coordinates": [[*strip, strip[0]]]}
            area = Area.from_geometry("strip", "Strip", geometry)
            if cell in _overlap_only(area):
                continue
            for t in (0.25, 0.5, 0.75):
                lng, lat = x1 + dx * t + nx * 2e-10, y1 + dy * t + ny * 2e-10
                if cell_for(lat, lng) == cell and shape(geometry).covers(Point(lng, lat)):
                    assert area.contains(lat, lng)
                    assert cell in area.cells, "the cover misses the cell of a point inside the area"
                    assert area.selects(lat, lng, cell)
                    found += 1
                    break
    # If H3 ever fills polygons with its own cell geometry this finds nothing; then the ring can go.
    assert found > 0


# --- exact point in polygon ----------------------------------------------------------------------------


def _square_with_diagonal() -> Area:
    # Exactly representable corners; one diagonal edge from (115.0, 39.0) to (115.5, 39.5).
    ring = [[115.0, 39.0], [115.5, 39.5], [116.0, 39.0], [116.0, 40.0], [115.0, 40.0], [115.0, 39.0]]
    return Area.from_geometry("exact", "Exact", {"type": "Polygon", "coordinates": [ring]})


@pytest.mark.parametrize(
    ("lat", "lng", "inside"),
    [
        (40.0, 115.5, True),  # on the top edge
        (math.nextafter(40.0, 41.0), 115.5, False),  # the next float above it
        (39.5, 115.0, True),  # on the left edge
        (39.5, math.nextafter(115.0, 114.0), False),
        (39.25, 115.25, True),  # exactly on the diagonal edge
        (math.nextafter(39.25, 39.0), 115.25, False),  # the next float below the diagonal
        (math.nextafter(39.25, 40.0), 115.25, True),
        (39.5, 115.5, True),  # the reflex vertex
        (39.0, 116.0, True),  # a convex vertex
        (39.0, 115.5, False),  # below the notch, level with two vertices
        (39.75, 115.75, True),
    ],
)
def test_contains_is_exact_on_and_next_to_edges(lat, lng, inside):
    area = _square_with_diagonal()
    assert area.contains(lat, lng) is inside
    assert shape(area.geojson()).covers(Point(lng, lat)) is inside  # the oracle agrees


def _naive_side(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float]) -> int:
    det = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    return (det > 0) - (det < 0)


def _exact_side(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float]) -> int:
    (ax, ay), (bx, by), (px, py) = ((Fraction(x), Fraction(y)) for x, y in (a, b, p))
    det = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    return (det > 0) - (det < 0)


def test_contains_agrees_with_the_oracle_within_a_few_ulps_of_the_edges():
    """Points on the float grid right next to slanted edges of a district around 0 N 0 E, where
    differences of coordinates are inexact and plain floating-point orientation signs go wrong: the exact
    test must still agree with shapely (GEOS decides orientation robustly)."""
    ring = [[-0.0213, -0.0171], [0.0187, -0.0093], [0.0071, 0.0231], [-0.0153, 0.0119], [-0.0213, -0.0171]]
    geometry = {"type": "Polygon", "coordinates": [ring]}
    area = Area.from_geometry("null-island", "Null Island", geometry)
    points: list[tuple[float, float]] = []  # (lng, lat)
    hard = 0
    for a, b in itertools.pairwise((x, y) for x, y in ring):
        for i in range(1, 300):
            t = i / 300
            x, y = a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t
            for steps in range(-3, 4):
                p = (x, y)
                for _ in range(abs(steps)):
                    p = (p[0], math.nextafter(p[1], math.copysign(math.inf, steps)))
                points.append(p)
                hard += _naive_side(a, b, p) != _exact_side(a, b, p)
    assert hard > 100, "the sample should hold points where naive floating point gets the side wrong"
    covered = shapely.covers(shape(geometry), shapely.points(points))
    wrong = [p for p, inside in zip(points, covered, strict=True) if area.contains(p[1], p[0]) != inside]
    assert not wrong, (
        f"{len(wrong)} of {len(points)} near-edge points disagree with shapely, e.g. {wrong[:3]}"
    )


def test_the_hole_is_excluded_but_its_edge_is_not():
    area = AreaRegistry.default().get("rongdong")
    assert len(area.polygons[0]) == 2, "the demo's Rongdong has a hole (the lake)"
    hole = area.polygons[0][1]
    assert area.contains(39.0020, 115.9470) is False  # the middle of the lake
    assert area.contains(39.0020, 115.9340) is True  # between the outer ring and the lake
    lng, lat = hole[0]
    assert area.contains(lat, lng) is True  # a vertex of the lake shore
    assert area.contains(lat + 2 / M_PER_DEG_LAT, lng + 1 / M_PER_DEG_LAT) is False  # 2 m into the lake
    # The same rings without the hole do contain the lake.
    outer_only = Area.from_geometry(
        "no-hole", "No hole", {"type": "Polygon", "coordinates": [area.geojson()["coordinates"][0]]}
    )
    assert outer_only.contains(39.0020, 115.9470) is True


def test_multipolygon_parts_are_all_in_the_area_and_the_gap_is_not():
    area = AreaRegistry.default().get("lakeshore")
    assert area.geometry_type == "MultiPolygon"
    assert len(area.polygons) == 2
    west, east, gap = (38.9720, 115.9100), (38.9720, 115.9620), (38.9720, 115.9350)
    assert area.contains(*west)
    assert area.contains(*east)
    assert not area.contains(*gap)
    assert cell_for(*west) in area.cells
    assert cell_for(*east) in area.cells
    assert cell_for(*gap) not in area.cells  # ~1.5 km from both parts
    assert area.geojson() == _demo_geometry("lakeshore")


def test_multipolygon_with_a_hole_in_its_second_part():
    square = [[0.0, 0.0], [0.01, 0.0], [0.01, 0.01], [0.0, 0.01], [0.0, 0.0]]
    far = [[0.02, 0.0], [0.03, 0.0], [0.03, 0.01], [0.02, 0.01], [0.02, 0.0]]
    hole = [[0.024, 0.004], [0.026, 0.004], [0.026, 0.006], [0.024, 0.006], [0.024, 0.004]]
    document = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"name": "pair", "title": "Pair"},
                "geometry": {"type": "MultiPolygon", "coordinates": [[square], [far, hole]]},
            }
        ],
    }
    area = AreaRegistry.from_geojson(document).get("pair")
    assert area.bbox == BBox(0.0, 0.0, 0.01, 0.03)
    assert area.contains(0.005, 0.005)
    assert area.contains(0.002, 0.022)
    assert not area.contains(0.005, 0.025)  # in the hole of the second part
    assert not area.contains(0.005, 0.015)  # between the parts


# --- the registry -------------------------------------------------------------------------------------


def test_default_registry_loads_the_shipped_districts_once():
    resource = importlib.resources.files("cityos_platform") / "data" / "areas" / "xiongan-demo.geojson"
    assert resource.is_file()
    registry = AreaRegistry.default()
    assert registry is AreaRegistry.default()
    assert set(registry.names()) == set(DEMO_NAMES)
    assert "rongdong" in registry
    assert registry.get("rongdong").title == "Rongdong"


def test_demo_districts_are_plausible_and_do_not_overlap():
    document = _demo_document()
    geometries = {f["properties"]["name"]: shape(f["geometry"]) for f in document["features"]}
    for name in DISTRICTS:
        geometry = _demo_geometry(name)
        assert geometries[name].is_valid
        assert 2.0 <= _km2(geometry) <= 8.0, (name, _km2(geometry))
        assert geometries["city"].contains(geometries[name]), name
        for ring in _rings(geometry):
            assert 5 <= len(ring) - 1 <= 12, name
            for lng, lat in ring:  # GeoJSON order, around 39.0 N 115.95 E
                assert 38.9 < lat < 39.1, (name, lng, lat)
                assert 115.8 < lng < 116.1, (name, lng, lat)
    for i, a in enumerate(DISTRICTS):
        for b in DISTRICTS[i + 1 :]:
            assert not geometries[a].intersects(geometries[b]), (a, b)
    with_holes = [
        n for n in DISTRICTS if geometries[n].geom_type == "Polygon" and len(geometries[n].interiors)
    ]
    assert with_holes == ["rongdong"]


def test_unknown_area_is_not_found_with_the_known_names():
    registry = AreaRegistry.default()
    with pytest.raises(NotFound) as caught:
        registry.get("atlantis")
    assert caught.value.reason == "AREA_NOT_FOUND"
    assert "atlantis" in caught.value.message
    for name in DEMO_NAMES:
        assert name in caught.value.message
    with pytest.raises(NotFound) as caught:
        registry.resolve("atlantis")
    assert caught.value.reason == "AREA_NOT_FOUND"


def test_resolve_a_name_returns_the_registered_area():
    registry = AreaRegistry.default()
    assert registry.resolve("qidong") is registry.get("qidong")
    assert registry.resolve(" qidong ") is registry.get("qidong")


def test_resolve_a_bbox_spec_builds_a_rectangle():
    registry = AreaRegistry.default()
    area = registry.resolve("bbox: 38.995, 115.935,39.005 ,115.955")
    assert area.name == "bbox:38.995,115.935,39.005,115.955"
    assert area.bbox == BBox(38.995, 115.935, 39.005, 115.955)
    assert area.contains(39.0, 115.945)
    assert area.contains(39.005, 115.955)  # the corner: bounds are included
    assert not area.contains(39.0051, 115.945)
    assert not area.contains(39.0, 115.9349)
    rng = random.Random(7)
    for lat, lng in _random_points(area.bbox, 2000, rng):
        inside = 38.995 <= lat <= 39.005 and 115.935 <= lng <= 115.955
        assert (cell_for(lat, lng) in area.cells and area.contains(lat, lng)) is inside, (lat, lng)


def test_the_largest_bbox_is_accepted_and_bounded():
    side = MAX_BBOX_SIDE_DEG
    area = AreaRegistry.default().resolve(f"bbox:39.0,115.5,{39.0 + side},{115.5 + side}")
    # Small enough for one IN list on both backends (SQLite and asyncpg take at most 32,767 parameters).
    assert 2_000 < len(area.cells) < 8_000
    assert area.contains(39.0 + side / 2, 115.5 + side / 2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "must name an area"),
        ("bbox:", "4 numbers"),
        ("bbox:39,115.9,39.1", "4 numbers"),
        ("bbox:39,115.9,39.1,116,3", "4 numbers"),
        ("bbox:south,115.9,39.1,116", "min_lat is not a number"),
        ("bbox:39,115.9,39.1,nan", "max_lng must be finite"),
        ("bbox:39.1,115.9,39.0,116.0", "min_lat must be below max_lat"),
        ("bbox:39.0,115.9,39.0,116.0", "min_lat must be below max_lat"),
        ("bbox:39.0,116.0,39.1,115.9", "min_lng below max_lng"),
        ("bbox:38.0,115.0,39.0,116.0", f"at most {MAX_BBOX_SIDE_DEG} degrees"),
        ("bbox:39.0,115.0,39.1,115.6", f"at most {MAX_BBOX_SIDE_DEG} degrees"),
        ("bbox:90.0,115.0,90.4,115.1", "-90 to 90"),
        ("bbox:39.0,180.0,39.1,180.1", "-180 to 180"),
    ],
)
def test_malformed_bbox_specs_are_invalid_arguments_on_area(spec, message):
    with pytest.raises(InvalidArgument) as caught:
        AreaRegistry.default().resolve(spec)
    [violation] = caught.value.violations
    assert violation.field == "area"
    assert message in violation.description


def test_bbox_errors_use_the_callers_field_name():
    with pytest.raises(InvalidArgument) as caught:
        AreaRegistry.default().resolve("bbox:1,2", field="filter.area")
    assert [v.field for v in caught.value.violations] == ["filter.area"]


# --- loading ------------------------------------------------------------------------------------------


def _document() -> dict[str, Any]:
    ring = [[115.90, 39.00], [115.91, 39.00], [115.91, 39.01], [115.90, 39.01], [115.90, 39.00]]
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"name": name, "title": name.title()},
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[lng + offset, lat] for lng, lat in ring]],
                },
            }
            for name, offset in (("north", 0.0), ("south", 0.05))
        ],
    }


def _broken(change: str) -> dict[str, Any]:
    document = copy.deepcopy(_document())
    feature = document["features"][1]
    rings = feature["geometry"]["coordinates"]
    if change == "open ring":
        rings[0].pop()
    elif change == "three positions":
        rings[0] = [[115.95, 39.0], [115.96, 39.0], [115.95, 39.0]]
    elif change == "duplicate name":
        feature["properties"]["name"] = "north"
    elif change == "bad name":
        feature["properties"]["name"] = "South District"
    elif change == "no title":
        del feature["properties"]["title"]
    elif change == "lat lng swapped":
        rings[0] = [[lat, lng] for lng, lat in rings[0]]
    elif change == "self intersection":
        rings[0] = [[115.95, 39.00], [115.96, 39.01], [115.96, 39.00], [115.95, 39.01], [115.95, 39.00]]
    elif change == "hole outside":
        rings.append([[115.99, 39.0], [115.995, 39.0], [115.995, 39.005], [115.99, 39.0]])
    elif change == "hole crossing":
        rings.append([[115.955, 39.005], [115.97, 39.005], [115.97, 39.006], [115.955, 39.005]])
    elif change == "point geometry":
        feature["geometry"] = {"type": "Point", "coordinates": [115.95, 39.0]}
    elif change == "collinear":
        rings[0] = [[115.95, 39.0], [115.96, 39.0], [115.97, 39.0], [115.95, 39.0]]
    else:
        raise AssertionError(change)
    return document


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("open ring", "feature 1 (south): polygon outer ring: ring is not closed"),
        ("three positions", "at least 4 positions, got 3"),
        ("duplicate name", "feature 1 (north): duplicate area name 'north' (also feature 0)"),
        ("bad name", "properties.name must be a slug"),
        ("no title", "feature 1 (south): properties.title must be a non-empty string"),
        ("lat lng swapped", "out of range (GeoJSON order is [lng, lat])"),
        ("self intersection", "outer ring intersects itself"),
        ("hole outside", "hole 1: lies outside the outer ring"),
        ("hole crossing", "outer ring and hole 1 touch or cross"),
        ("point geometry", "geometry type must be Polygon or MultiPolygon, got 'Point'"),
        ("collinear", "ring has no area"),
    ],
)
def test_loading_refuses_broken_geojson_with_a_clear_message(change, message):
    AreaRegistry.from_geojson(_document())  # the unbroken document loads
    with pytest.raises(AreaDefinitionError) as caught:
        AreaRegistry.from_geojson(_broken(change))
    assert message in str(caught.value)


def test_from_file_loads_and_names_the_file_in_errors(tmp_path):
    good = tmp_path / "areas.geojson"
    good.write_text(json.dumps(_document()), encoding="utf-8")
    assert AreaRegistry.from_file(good).names() == ("north", "south")

    broken = tmp_path / "broken.geojson"
    broken.write_text(json.dumps(_broken("open ring")), encoding="utf-8")
    with pytest.raises(AreaDefinitionError, match=r"broken\.geojson: feature 1 \(south\).*not closed"):
        AreaRegistry.from_file(broken)

    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{not json", encoding="utf-8")
    with pytest.raises(AreaDefinitionError, match=r"garbage\.geojson: cannot read GeoJSON"):
        AreaRegistry.from_file(garbage)
