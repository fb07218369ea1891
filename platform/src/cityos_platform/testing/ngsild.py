"""Checks of NGSI-LD views for the services' tests: a keyValues entity against its FIWARE Smart Data
Model's JSON Schema (draft 2020-12, every `$ref` resolved from vendored files — nothing is fetched), and
a strict check of the NGSI-LD normalized form (Property / Relationship / GeoProperty, GeoJSON geometries,
observedAt and the other sub-attributes).

    models = SmartDataModels(Path(__file__).parent / "smart-data-models")
    assert models.schema_errors(key_values_entity) == []
    assert normalized_problems(normalized_entity) == []

Test-only (it needs `jsonschema` from the dev dependencies); parking and streetlights use it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable

# --- the schemas, resolved locally -------------------------------------------------------------------

# jsonschema only asserts the formats whose optional libraries are installed (rfc3339-validator, rfc3987
# are not): these checks are ours, so `format` is really enforced.
FORMATS = FormatChecker(formats=())
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s<>\"{}|\\^`]+$")


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.replace("z", "Z"))  # raises on 2024-02-30 and the like
    return True


def _date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _DATE.match(value):
        return False
    datetime.fromisoformat(value)
    return True


def _uri(value: object) -> bool:
    return not isinstance(value, str) or bool(_URI.match(value))


FORMATS.checks("date-time", raises=ValueError)(_date_time)
FORMATS.checks("date", raises=ValueError)(_date)
FORMATS.checks("uri")(_uri)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def build_registry(folder: Path) -> Registry[Any]:
    """Every schema file of `folder` under its own `$id`. No `retrieve`: a `$ref` to anything else is
    Unresolvable (nothing is fetched), and every `$ref` is checked here, so a missing file fails loudly."""
    resources: list[tuple[str, Resource[Any]]] = []
    for path in sorted(folder.rglob("*schema.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(contents)
        resources.append((contents["$id"], Resource.from_contents(contents)))
    registry: Registry[Any] = Registry().with_resources(resources).crawl()
    for uri, resource in resources:
        resolver = registry.resolver(base_uri=uri)
        for ref in _refs(resource.contents):
            try:
                resolver.lookup(ref)
            except Unresolvable as error:
                target = urldefrag(urljoin(uri, ref)).url
                raise AssertionError(
                    f"{uri} refers to {ref!r}, which is not available locally ({target} is not among "
                    f"{sorted(u for u, _ in resources)}): vendor it into {folder}"
                ) from error
    return registry


class SmartDataModels:
    """The schemas of a folder of vendored Smart Data Models (one sub-folder per model with its
    `schema.json`, plus the common schemas they `$ref`), resolved locally."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._validators: dict[str, Draft202012Validator] = {}

    @cached_property
    def registry(self) -> Registry[Any]:
        return build_registry(self.folder)

    def _schema(self, model: str) -> dict[str, Any]:
        return json.loads((self.folder / model / "schema.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]

    def validator(self, model: str) -> Draft202012Validator:
        if model not in self._validators:
            self._validators[model] = Draft202012Validator(
                self._schema(model), registry=self.registry, format_checker=FORMATS
            )
        return self._validators[model]

    def schema_errors(self, entity: dict[str, Any]) -> list[str]:
        """The schema's complaints about a keyValues entity (by its `type`), sorted; [] when it is valid."""
        errors = self.validator(entity["type"]).iter_errors(entity)
        return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<entity>'}: {e.message}" for e in errors)

    def declared_attributes(self, model: str) -> set[str]:
        """Every property name the model's schema declares (its own and the common ones it `$ref`s)."""
        schema = self._schema(model)
        resolver = self.registry.resolver(base_uri=schema["$id"])
        names: set[str] = set()
        for part in schema["allOf"]:
            if "$ref" in part:
                part = resolver.lookup(part["$ref"]).contents
            names |= set(part.get("properties", {}))
        return names


# --- a strict NGSI-LD normalized-form check ----------------------------------------------------------

_TERM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = {"id", "type", "scope", "value", "object", "createdAt", "modifiedAt", "observedAt", "datasetId"}
_GEO_ATTRIBUTES = {"location", "observationSpace", "operationSpace"}


def _instant(value: object) -> bool:
    return isinstance(value, str) and _date_time(value) and value.endswith("Z")


def _position_problems(position: object, where: str) -> list[str]:
    if not (
        isinstance(position, list)
        and len(position) in (2, 3)
        and all(isinstance(c, int | float) and not isinstance(c, bool) for c in position)
    ):
        return [f"{where}: a position is [lng, lat(, alt)], got {position!r}"]
    lng, lat = position[0], position[1]
    if not (-180 <= lng <= 180 and -90 <= lat <= 90):
        return [f"{where}: [{lng}, {lat}] is not [lng, lat] in range"]
    return []


def _positions_problems(positions: object, where: str, least: int) -> list[str]:
    if not isinstance(positions, list) or len(positions) < least:
        return [f"{where}: at least {least} positions expected"]
    return [p for i, c in enumerate(positions) for p in _position_problems(c, f"{where}[{i}]")]


def _ring_problems(ring: object, where: str) -> list[str]:
    if not isinstance(ring, list) or len(ring) < 4 or ring[0] != ring[-1]:
        return [f"{where}: a ring is closed and has at least 4 positions"]
    return _positions_problems(ring, where, 4)


def _geometry_problems(geometry: object, where: str) -> list[str]:
    if not isinstance(geometry, dict) or not isinstance(geometry.get("type"), str):
        return [f"{where}: not a GeoJSON geometry"]
    kind, coordinates = geometry["type"], geometry.get("coordinates")
    if set(geometry) - {"type", "coordinates", "bbox"}:
        return [f"{where}: unexpected GeoJSON members {sorted(set(geometry) - {'type', 'coordinates'})}"]
    if kind == "Point":
        return _position_problems(coordinates, where)
    if kind == "MultiPoint":
        return _positions_problems(coordinates, where, 1)
    if kind == "LineString":
        return _positions_problems(coordinates, where, 2)
    if kind in ("MultiLineString", "Polygon", "MultiPolygon"):
        if not isinstance(coordinates, list) or not coordinates:
            return [f"{where}: a {kind} has at least one member"]
        problems: list[str] = []
        for i, member in enumerate(coordinates):
            if kind == "MultiLineString":
                problems += _positions_problems(member, f"{where}[{i}]", 2)
            elif kind == "Polygon":
                problems += _ring_problems(member, f"{where}[{i}]")
            elif not isinstance(member, list) or not member:
                problems.append(f"{where}[{i}]: a polygon has at least one ring")
            else:
                problems += [
                    p for r, ring in enumerate(member) for p in _ring_problems(ring, f"{where}[{i}][{r}]")
                ]
        return problems
    return [f"{where}: GeoJSON type {kind!r} not expected here"]


def _attribute_problems(name: str, attr: object, where: str) -> list[str]:
    if not _TERM.match(name) or name in _RESERVED:
        return [f"{where}: {name!r} is not a valid attribute name"]
    if isinstance(attr, list):
        ids = [a.get("datasetId") if isinstance(a, dict) else None for a in attr]
        distinct = len(set(ids)) == len(ids) and attr
        return ([] if distinct else [f"{where}: instances need distinct datasetId"]) + [
            p for i, a in enumerate(attr) for p in _attribute_problems(name, a, f"{where}[{i}]")
        ]
    if not isinstance(attr, dict):
        return [f"{where}: an attribute is an object, got {type(attr).__name__}"]
    kind = attr.get("type")
    problems: list[str] = []
    if name in _GEO_ATTRIBUTES and kind != "GeoProperty":
        problems.append(f"{where}: {name} must be a GeoProperty")
    if kind == "Property":
        if "value" not in attr or attr["value"] is None or "object" in attr:
            problems.append(f"{where}: a Property has a non-null value and no object")
    elif kind == "GeoProperty":
        if "object" in attr or "value" not in attr:
            problems.append(f"{where}: a GeoProperty has a value and no object")
        else:
            problems += _geometry_problems(attr["value"], f"{where}.value")
    elif kind == "Relationship":
        target = attr.get("object")
        targets = target if isinstance(target, list) else [target]
        if "value" in attr or not targets or len(set(map(str, targets))) != len(targets):
            problems.append(f"{where}: a Relationship has an object (URI, or unique URIs) and no value")
        problems += [
            f"{where}.object: {t!r} is not a URI"
            for t in targets
            if not (isinstance(t, str) and _URI.match(t))
        ]
    else:
        return [f"{where}: type {kind!r} is not Property, Relationship or GeoProperty"]
    for key, member in attr.items():
        if key in ("type", "value", "object"):
            continue
        if key in ("observedAt", "createdAt", "modifiedAt"):
            if not _instant(member):
                problems.append(f"{where}.{key}: {member!r} is not an ISO 8601 UTC instant ending in Z")
        elif key == "unitCode":
            if not isinstance(member, str) or not member:
                problems.append(f"{where}.unitCode: not a code")
        elif key == "datasetId":
            if not (isinstance(member, str) and _URI.match(member)):
                problems.append(f"{where}.datasetId: not a URI")
        else:
            problems += _attribute_problems(key, member, f"{where}.{key}")
    return problems


def normalized_problems(entity: object) -> list[str]:
    """Everything that keeps `entity` from being a well-formed NGSI-LD normalized entity."""
    if not isinstance(entity, dict):
        return ["an entity is a JSON object"]
    problems = []
    if not (isinstance(entity.get("id"), str) and _URI.match(entity["id"])):
        problems.append(f"id: {entity.get('id')!r} is not a URI")
    if not (isinstance(entity.get("type"), str) and _TERM.match(entity["type"])):
        problems.append(f"type: {entity.get('type')!r} is not a term")
    context = entity.get("@context", [])
    contexts = context if isinstance(context, list) else [context]
    if not all(isinstance(c, str) and _URI.match(c) for c in contexts):
        problems.append("@context: URIs expected")
    for name, attr in entity.items():
        if name not in ("id", "type", "@context"):
            problems += _attribute_problems(name, attr, name)
    return problems
