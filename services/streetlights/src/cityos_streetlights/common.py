"""What the streetlights modules share: resource names, validation pieces, timestamps, etags, events."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from cityos_platform.db import Tx
from cityos_platform.errors import Aborted, InvalidArgument

RESOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ID_RULE = "[a-z0-9][a-z0-9-]{0,62}"
Violations = list[tuple[str, str]]
SOURCE = "streetlights"


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


def finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def new_etag() -> str:
    return uuid.uuid4().hex[:16]


def name_id(name: str, collection: str, field: str = "name") -> str:
    """The id in `collection/{id}`, or INVALID_ARGUMENT naming `field`."""
    prefix, _, resource_id = name.partition("/")
    if prefix != collection or not RESOURCE_ID.match(resource_id):
        raise InvalidArgument.field(field, f"must look like {collection}/{{id}}, the id {ID_RULE}")
    return resource_id


def reference_problem(value: str, collection: str, field: str) -> Violations:
    """A problem when `value` is set and is not `collection/{id}`."""
    if not value:
        return []
    prefix, _, resource_id = value.partition("/")
    if prefix != collection or not RESOURCE_ID.match(resource_id):
        return [(field, f"must look like {collection}/{{id}}, the id {ID_RULE}")]
    return []


def ref_id(value: str) -> str | None:
    """`collection/{id}` -> id; "" -> None."""
    return value.partition("/")[2] or None


def location_problems(location: Any, has_location: bool, field: str) -> Violations:
    if not has_location:
        return [(field, "is required")]
    problems: Violations = []
    if not finite(location.latitude) or not -90.0 <= location.latitude <= 90.0:
        problems.append((f"{field}.latitude", "must be a number from -90 to 90"))
    if not finite(location.longitude) or not -180.0 <= location.longitude <= 180.0:
        problems.append((f"{field}.longitude", "must be a number from -180 to 180"))
    return problems


def mask(paths: Sequence[str], updatable: set[str]) -> list[str]:
    unknown = [path for path in paths if path not in updatable]
    if not paths or unknown:
        raise InvalidArgument.field(
            "update_mask", f"name the fields to change among {', '.join(sorted(updatable))}"
        )
    return list(paths)


def check_etag(requested: str, current: str) -> None:
    if requested and requested != current:
        raise Aborted(
            "it changed since it was read; read it again and reapply the change",
            reason="ETAG_MISMATCH",
            metadata={"current_etag": current},
        )


def emit(tx: Tx, event: str, payload: Any, *, subject: str, owner: str, cell: str = "") -> None:
    """A `streetlights.<event>` of `owner`, in `cell`."""
    tx.emit(f"{SOURCE}.{event}", payload, subject=subject, owner_organization=owner, area_cell=cell)
