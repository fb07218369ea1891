"""The shared area registry: named districts as polygons, points as H3 cells.

Every located resource stores its point and the H3 cell of that point at `AREA_CELL_RESOLUTION` (9)
(`models.LocatedMixin.area_cell`, the event envelope's `area_cell`). Resolution 9 cells are about
0.105 km² (edge ~200 m): fine enough that a district of a few km² is a few dozen cells, so an area
filter is a short `area_cell IN (...)` list that an index answers, yet coarse enough that a cell
identifies a city block rather than a person's door, so the cell alone can travel in events and shared
data. One resolution for everything means an area's cell set is comparable with every stored cell.

An area filter is two steps that together select exactly the points inside the polygon:

1. the prefilter `area_cell IN area.cells` (SQL, indexed): `Area.cells` holds the cell of every point
   that may be inside, and usually a few more;
2. the refinement `area.contains(lat, lng)`: an exact point-in-polygon test (bounding box, then
   even-odd ray casting with exact orientation signs). Points exactly on an edge, including the edge of
   a hole, are inside (the closed polygon, what `shapely`'s `covers` answers).

Why `Area.cells` is the H3 "overlap" cover grown by one ring. H3 decides which cell a point falls in
(`latlng_to_cell`) on its own projection, whose cell edges are not the straight lat/lng segments between
the vertices `cell_to_boundary` returns; its polygon fill (`h3shape_to_cells_experimental(...,
"overlap")`), however, intersects the polygon with those straight-segment hexagons. The two differ by
well under a millimetre at resolution 9, and that is enough: a polygon whose boundary runs within that
sliver of a cell edge can contain a point that H3 assigns to a cell the overlap fill leaves out
(`tests/platform/test_areas.py` builds such a polygon). Such a point P lies in the closed polygon and
within a millimetre of its cell C, while C's hexagon misses the polygon; so the polygon near P meets a
hexagon N within a millimetre of C, that is, C itself or one of its six neighbours, and N is in the
overlap fill. Adding the neighbours of every cell of the fill (`grid_disk(cell, 1)`) therefore puts C
in the cover. The extra cells cost a slightly longer IN list, never a wrong answer: the refinement
drops whatever they bring in.

Polygons are GeoJSON (RFC 7946): positions are `[lng, lat]`, the first ring of a polygon is its outer
boundary and the others are holes; edges are straight lines in lat/lng, as H3, PostGIS geometry and
shapely read them. Areas must not cross the antimeridian.
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, NamedTuple

import h3  # type: ignore[import-untyped]

from cityos_platform.errors import InvalidArgument, NotFound

AREA_CELL_RESOLUTION = 9
"""The H3 resolution of every stored `area_cell` and of every area's cell set (see the module doc)."""

BBOX_PREFIX = "bbox:"
MAX_BBOX_SIDE_DEG = 0.2
"""The largest side of an ad-hoc `bbox:` area, in degrees (at 39° N about 55 km x 43 km, ~33,000 cells)."""

DEFAULT_AREAS_FILE = "xiongan-demo.geojson"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

Position = tuple[float, float]
"""A GeoJSON position: `(lng, lat)`."""
Ring = tuple[Position, ...]
"""A closed ring: at least four positions, the first equal to the last."""
PolygonCoords = tuple[Ring, ...]
"""The outer ring, then the holes."""
GeometryType = Literal["Polygon", "MultiPolygon"]


class AreaDefinitionError(ValueError):
    """An area definition (GeoJSON) that cannot be loaded; the message says which feature and why."""


class BBox(NamedTuple):
    """A lat/lng rectangle, bounds included."""

    min_lat: float
    min_lng: float
    max_lat: float
    max_lng: float

    def contains(self, lat: float, lng: float) -> bool:
        return self.min_lat <= lat <= self.max_lat and self.min_lng <= lng <= self.max_lng


# --- cells -------------------------------------------------------------------------------------------


def cell_for(
    lat: float, lng: float, resolution: int = AREA_CELL_RESOLUTION, *, field: str = "location"
) -> str:
    """The H3 cell of a point. Raises `InvalidArgument` on `<field>.latitude` / `<field>.longitude`."""
    violations = []
    if not _finite_number(lat) or not -90.0 <= lat <= 90.0:
        violations.append((f"{field}.latitude", f"must be a number from -90 to 90, got {lat!r}"))
    if not _finite_number(lng) or not -180.0 <= lng <= 180.0:
        violations.append((f"{field}.longitude", f"must be a number from -180 to 180, got {lng!r}"))
    if violations:
        raise InvalidArgument.many(violations)
    return str(h3.latlng_to_cell(float(lat), float(lng), resolution))


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _cover(polygons: Sequence[PolygonCoords], resolution: int) -> frozenset[str]:
    """Every cell whose hexagon overlaps the polygons, grown by one ring (see the module doc)."""
    overlap: set[str] = set()
    for polygon in polygons:
        outer, *holes = ([(lat, lng) for lng, lat in ring[:-1]] for ring in polygon)
        shape = h3.LatLngPoly(outer, *holes)
        overlap.update(h3.h3shape_to_cells_experimental(shape, resolution, contain="overlap"))
    cover = set(overlap)
    for cell in overlap:
        cover.update(h3.grid_disk(cell, 1))
    return frozenset(cover)


# --- exact geometry ----------------------------------------------------------------------------------

_EPSILON = 2.0**-53
_ORIENT_ERROR_BOUND = (3.0 + 16.0 * _EPSILON) * _EPSILON  # Shewchuk's ccwerrboundA
_TINY = 1e-280  # below this the floating-point filter could underflow: decide exactly


def _orient(ax: float, ay: float, bx: float, by: float, px: float, py: float) -> int:
    """The exact sign of (b - a) x (p - a): 1 when p is left of a->b, -1 right, 0 on the line.

    A floating-point filter with Shewchuk's error bound decides almost every case; the rest are decided
    with exact rational arithmetic (every float is a rational).
    """
    left = (ax - px) * (by - py)
    right = (ay - py) * (bx - px)
    det = left - right
    bound = _ORIENT_ERROR_BOUND * (abs(left) + abs(right))
    if abs(det) > bound and bound > _TINY:
        return 1 if det > 0 else -1
    fax, fay, fbx, fby, fpx, fpy = (Fraction(v) for v in (ax, ay, bx, by, px, py))
    exact = (fax - fpx) * (fby - fpy) - (fay - fpy) * (fbx - fpx)
    return (exact > 0) - (exact < 0)


def _polygon_covers(polygon: PolygonCoords, x: float, y: float) -> bool:
    """Even-odd ray casting (a ray towards +x) over all rings; a point on any edge is inside."""
    inside = False
    for ring in polygon:
        ax, ay = ring[0]
        for bx, by in ring[1:]:
            if (ay > y) != (by > y):  # the edge spans the ray's line (half-open, so vertices count once)
                side = _orient(ax, ay, bx, by, x, y)
                if side == 0:
                    return True
                if (side > 0) == (by > ay):  # the edge passes to the right of the point
                    inside = not inside
            elif max(ay, by) == y and min(ax, bx) <= x <= max(ax, bx) and _orient(ax, ay, bx, by, x, y) == 0:
                return True  # on a horizontal edge or on a vertex
            ax, ay = bx, by
    return inside


def _segments_meet(a: Position, b: Position, c: Position, d: Position) -> bool:
    """Whether the closed segments ab and cd share a point (exact)."""
    d1 = _orient(*a, *b, *c)
    d2 = _orient(*a, *b, *d)
    d3 = _orient(*c, *d, *a)
    d4 = _orient(*c, *d, *b)
    if d1 * d2 < 0 and d3 * d4 < 0:
        return True

    def on(p: Position, q: Position, r: Position) -> bool:  # r on segment pq, given collinear
        return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])

    return (
        (d1 == 0 and on(a, b, c))
        or (d2 == 0 and on(a, b, d))
        or (d3 == 0 and on(c, d, a))
        or (d4 == 0 and on(c, d, b))
    )


# --- areas -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Area:
    """A named area: its polygons, bounding box and H3 cover. Build one with `Area.from_geometry`."""

    name: str
    title: str
    geometry_type: GeometryType
    polygons: tuple[PolygonCoords, ...]
    """Normalised to a list of polygons (one for a GeoJSON Polygon), each its outer ring then its holes."""
    bbox: BBox
    cells: frozenset[str] = field(repr=False)
    """Every resolution-9 cell that can hold a point of the area: the SQL prefilter."""

    @classmethod
    def from_geometry(cls, name: str, title: str, geometry: Mapping[str, Any]) -> Area:
        """Validate a GeoJSON Polygon or MultiPolygon geometry and compute the bbox and the cell cover.

        Raises `AreaDefinitionError` naming the problem (open ring, too few positions, a position out of
        range, a self-intersecting ring, a hole outside its polygon...).
        """
        geometry_type, polygons = _parse_geometry(geometry)
        lngs = [lng for polygon in polygons for lng, _ in polygon[0]]
        lats = [lat for polygon in polygons for _, lat in polygon[0]]
        if max(lngs) - min(lngs) > 180.0:
            raise AreaDefinitionError(
                "spans more than 180 degrees of longitude; areas must not cross the antimeridian"
            )
        bbox = BBox(min(lats), min(lngs), max(lats), max(lngs))
        return cls(name, title, geometry_type, polygons, bbox, _cover(polygons, AREA_CELL_RESOLUTION))

    def contains(self, lat: float, lng: float) -> bool:
        """Whether the point is in the area, edges included (exact)."""
        if not self.bbox.contains(lat, lng):
            return False
        return any(_polygon_covers(polygon, lng, lat) for polygon in self.polygons)

    def selects(self, lat: float, lng: float, cell: str) -> bool:
        """The whole filter for a stored row (its point and `area_cell`): prefilter, then refinement."""
        return cell in self.cells and self.contains(lat, lng)

    def geojson(self) -> dict[str, Any]:
        """The geometry as a GeoJSON object, in its original type."""
        polygons = [[[list(position) for position in ring] for ring in polygon] for polygon in self.polygons]
        if self.geometry_type == "Polygon":
            return {"type": "Polygon", "coordinates": polygons[0]}
        return {"type": "MultiPolygon", "coordinates": polygons}


def _parse_geometry(geometry: Mapping[str, Any]) -> tuple[GeometryType, tuple[PolygonCoords, ...]]:
    if not isinstance(geometry, Mapping):
        raise AreaDefinitionError("geometry must be a GeoJSON object")
    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    if kind == "Polygon":
        raw_polygons = [coordinates]
    elif kind == "MultiPolygon":
        if not isinstance(coordinates, list) or not coordinates:
            raise AreaDefinitionError("MultiPolygon coordinates must be a non-empty list of polygons")
        raw_polygons = coordinates
    else:
        raise AreaDefinitionError(f"geometry type must be Polygon or MultiPolygon, got {kind!r}")
    polygons = tuple(
        _parse_polygon(raw, f"polygon {index}" if kind == "MultiPolygon" else "polygon")
        for index, raw in enumerate(raw_polygons)
    )
    return kind, polygons


def _parse_polygon(raw: object, where: str) -> PolygonCoords:
    if not isinstance(raw, list) or not raw:
        raise AreaDefinitionError(f"{where}: coordinates must be a non-empty list of rings")
    rings = tuple(_parse_ring(ring, f"{where} {_ring_label(index)}") for index, ring in enumerate(raw))
    _check_simple(rings, where)
    outer, holes = rings[0], rings[1:]
    for index, hole in enumerate(holes, start=1):
        # The rings neither cross nor touch (checked above), so one vertex tells where a whole ring is.
        if not _polygon_covers((outer,), *hole[0]):
            raise AreaDefinitionError(f"{where} hole {index}: lies outside the outer ring")
        for other_index, other in enumerate(holes, start=1):
            if other_index != index and _polygon_covers((other,), *hole[0]):
                raise AreaDefinitionError(f"{where} hole {index}: lies inside hole {other_index}")
    return rings


def _parse_ring(raw: object, where: str) -> Ring:
    if not isinstance(raw, list):
        raise AreaDefinitionError(f"{where}: must be a list of [lng, lat] positions")
    positions: list[Position] = []
    for index, position in enumerate(raw):
        if (
            not isinstance(position, list | tuple)
            or len(position) < 2
            or not all(_finite_number(v) for v in position)
        ):
            raise AreaDefinitionError(
                f"{where} position {index}: must be [lng, lat] numbers, got {position!r}"
            )
        lng, lat = float(position[0]), float(position[1])
        if not (-180.0 <= lng <= 180.0 and -90.0 <= lat <= 90.0):
            raise AreaDefinitionError(
                f"{where} position {index}: {position!r} is out of range (GeoJSON order is [lng, lat])"
            )
        if not positions or positions[-1] != (lng, lat):  # a repeated position adds nothing
            positions.append((lng, lat))
    if len(raw) < 4:
        raise AreaDefinitionError(f"{where}: a ring needs at least 4 positions, got {len(raw)}")
    if positions[0] != positions[-1]:
        raise AreaDefinitionError(
            f"{where}: ring is not closed (first position {list(positions[0])} "
            f"differs from last {list(positions[-1])})"
        )
    a = positions[0]
    if len(positions) < 4 or all(_orient(*a, *b, *c) == 0 for b, c in itertools.pairwise(positions)):
        raise AreaDefinitionError(
            f"{where}: ring has no area (fewer than 3 distinct corners, or all collinear)"
        )
    return tuple(positions)


def _check_simple(rings: Sequence[Ring], where: str) -> None:
    """No ring crosses or touches itself (apart from consecutive edges) or another ring of the polygon."""
    edges = [
        (min(a[0], b[0]), max(a[0], b[0]), ring_index, edge_index, a, b)
        for ring_index, ring in enumerate(rings)
        for edge_index, (a, b) in enumerate(itertools.pairwise(ring))
    ]
    edges.sort(key=lambda edge: edge[0])
    for i, (_, max_x, ring_i, edge_i, a, b) in enumerate(edges):
        for min_x_j, _, ring_j, edge_j, c, d in edges[i + 1 :]:
            if min_x_j > max_x:
                break  # sorted by min x: no later edge reaches this one
            if max(a[1], b[1]) < min(c[1], d[1]) or max(c[1], d[1]) < min(a[1], b[1]):
                continue
            if ring_i == ring_j and abs(edge_i - edge_j) in (1, len(rings[ring_i]) - 2):
                # Consecutive edges share a vertex and may only meet there: they must not fold back.
                p, shared, q = (a, b, d) if b == c else (c, a, b)
                if _orient(*p, *shared, *q) == 0 and _folds_back(p, shared, q):
                    raise AreaDefinitionError(
                        f"{where}: {_ring_label(ring_i)} folds back on itself at {list(shared)}"
                    )
                continue
            if _segments_meet(a, b, c, d):
                if ring_i == ring_j:
                    raise AreaDefinitionError(
                        f"{where}: {_ring_label(ring_i)} intersects itself near {list(a)}"
                    )
                first, second = sorted((ring_i, ring_j))
                raise AreaDefinitionError(
                    f"{where}: {_ring_label(first)} and {_ring_label(second)} touch or cross near {list(a)}"
                )


def _ring_label(index: int) -> str:
    return "outer ring" if index == 0 else f"hole {index}"


def _folds_back(p: Position, shared: Position, q: Position) -> bool:
    """Collinear p-shared-q: whether q goes back along the edge from p (a zero-width spike)."""
    return (shared[0] - p[0]) * (q[0] - shared[0]) + (shared[1] - p[1]) * (q[1] - shared[1]) < 0


# --- the registry ------------------------------------------------------------------------------------


class AreaRegistry:
    """The named areas every service shares, and `bbox:` specs for ad-hoc rectangles."""

    def __init__(self, areas: Iterable[Area]) -> None:
        self._areas: dict[str, Area] = {}
        for area in areas:
            if area.name in self._areas:
                raise AreaDefinitionError(f"duplicate area name {area.name!r}")
            self._areas[area.name] = area

    @classmethod
    def default(cls) -> AreaRegistry:
        """The demo areas shipped with the platform (loaded once)."""
        return _default_registry()

    @classmethod
    def from_file(cls, path: str | Path) -> AreaRegistry:
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise AreaDefinitionError(f"{path}: cannot read GeoJSON: {error}") from error
        try:
            return cls.from_geojson(document)
        except AreaDefinitionError as error:
            raise AreaDefinitionError(f"{path}: {error}") from error

    @classmethod
    def from_geojson(cls, document: Mapping[str, Any]) -> AreaRegistry:
        """A registry from a GeoJSON FeatureCollection whose features carry `properties.name` (a slug such
        as `rongdong`) and `properties.title`, with Polygon or MultiPolygon geometries."""
        if not isinstance(document, Mapping) or document.get("type") != "FeatureCollection":
            raise AreaDefinitionError("areas must be a GeoJSON FeatureCollection")
        features = document.get("features")
        if not isinstance(features, list) or not features:
            raise AreaDefinitionError("the FeatureCollection has no features")
        areas: list[Area] = []
        seen: dict[str, int] = {}
        for index, feature in enumerate(features):
            where = f"feature {index}"
            if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
                raise AreaDefinitionError(f"{where}: not a GeoJSON Feature")
            properties = feature.get("properties")
            properties = properties if isinstance(properties, Mapping) else {}
            name, title = properties.get("name"), properties.get("title")
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
                raise AreaDefinitionError(
                    f"{where}: properties.name must be a slug (lowercase letters, digits, '-'), got {name!r}"
                )
            where = f"feature {index} ({name})"
            if name in seen:
                raise AreaDefinitionError(
                    f"{where}: duplicate area name {name!r} (also feature {seen[name]})"
                )
            seen[name] = index
            if not isinstance(title, str) or not title.strip():
                raise AreaDefinitionError(f"{where}: properties.title must be a non-empty string")
            geometry = feature.get("geometry")
            if not isinstance(geometry, Mapping):
                raise AreaDefinitionError(f"{where}: has no geometry")
            try:
                areas.append(Area.from_geometry(name, title, geometry))
            except AreaDefinitionError as error:
                raise AreaDefinitionError(f"{where}: {error}") from error
        return cls(areas)

    def names(self) -> tuple[str, ...]:
        """The area names, in the order they were defined."""
        return tuple(self._areas)

    def __iter__(self) -> Iterator[Area]:
        return iter(self._areas.values())

    def __len__(self) -> int:
        return len(self._areas)

    def __contains__(self, name: object) -> bool:
        return name in self._areas

    def get(self, name: str) -> Area:
        """The named area; `NotFound` (reason `AREA_NOT_FOUND`) listing the known names otherwise."""
        try:
            return self._areas[name]
        except KeyError:
            raise NotFound(
                f"no area named {name!r}; known areas: {', '.join(self.names())}",
                reason="AREA_NOT_FOUND",
                metadata={"area": name},
            ) from None

    def resolve(self, spec: str, *, field: str = "area") -> Area:
        """An area name, or `bbox:min_lat,min_lng,max_lat,max_lng` for a rectangle of at most
        `MAX_BBOX_SIDE_DEG` per side. Malformed specs raise `InvalidArgument` on `field`."""
        spec = spec.strip()
        if not spec:
            raise InvalidArgument.field(field, "must name an area or be bbox:min_lat,min_lng,max_lat,max_lng")
        if spec.lower().startswith(BBOX_PREFIX):
            return _bbox_area(*_parse_bbox(spec[len(BBOX_PREFIX) :], field))
        return self.get(spec)


def _parse_bbox(text: str, field: str) -> BBox:
    usage = "bbox:min_lat,min_lng,max_lat,max_lng"
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4:
        raise InvalidArgument.field(field, f"must be {usage} (4 numbers), got {len(parts)} values")
    values: list[float] = []
    for label, part in zip(("min_lat", "min_lng", "max_lat", "max_lng"), parts, strict=True):
        try:
            value = float(part)
        except ValueError:
            raise InvalidArgument.field(
                field, f"{label} is not a number: {part!r} (expected {usage})"
            ) from None
        if not math.isfinite(value):
            raise InvalidArgument.field(field, f"{label} must be finite, got {part!r}")
        values.append(value)
    box = BBox(*values)
    if not (-90.0 <= box.min_lat <= 90.0 and -90.0 <= box.max_lat <= 90.0):
        raise InvalidArgument.field(field, "latitudes must be from -90 to 90")
    if not (-180.0 <= box.min_lng <= 180.0 and -180.0 <= box.max_lng <= 180.0):
        raise InvalidArgument.field(field, "longitudes must be from -180 to 180")
    if not (box.min_lat < box.max_lat and box.min_lng < box.max_lng):
        raise InvalidArgument.field(field, "min_lat must be below max_lat and min_lng below max_lng")
    limit = MAX_BBOX_SIDE_DEG + 1e-9  # decimal bounds like 115.5 and 115.7 differ by 0.2000000000000028
    if box.max_lat - box.min_lat > limit or box.max_lng - box.min_lng > limit:
        raise InvalidArgument.field(field, f"a bbox side may be at most {MAX_BBOX_SIDE_DEG} degrees")
    return box


@functools.lru_cache(maxsize=16)
def _bbox_area(min_lat: float, min_lng: float, max_lat: float, max_lng: float) -> Area:
    ring = [
        [min_lng, min_lat],
        [max_lng, min_lat],
        [max_lng, max_lat],
        [min_lng, max_lat],
        [min_lng, min_lat],
    ]
    return Area.from_geometry(
        f"{BBOX_PREFIX}{min_lat!r},{min_lng!r},{max_lat!r},{max_lng!r}",
        f"Rectangle {min_lat},{min_lng} to {max_lat},{max_lng}",
        {"type": "Polygon", "coordinates": [ring]},
    )


@functools.cache
def _default_registry() -> AreaRegistry:
    resource = importlib.resources.files("cityos_platform") / "data" / "areas" / DEFAULT_AREAS_FILE
    try:
        return AreaRegistry.from_geojson(json.loads(resource.read_text(encoding="utf-8")))
    except AreaDefinitionError as error:
        raise AreaDefinitionError(f"{DEFAULT_AREAS_FILE}: {error}") from error
