"""Agreement terms: what a consumer may read of a dataset, checked when asked for, when granted (an
approval may only narrow) and on every read (`Grant`).

Terms are stored as JSON ({columns, areas, window_start, window_end, min_group_size, expire_time}, times
RFC 3339 in UTC) and travel as `cityos.datashare.v1.Terms`.

- `columns` must be fields of the dataset. When one of them is personal or sensitive, `min_group_size`
  must be at least 2: reads are then aggregated and small groups suppressed (see `enforce`).
- `areas` are names of the area registry or `h3:<cell>`; a lake row is in scope when the centre of its
  `area_cell` (H3, resolution 9) lies in one of them (`scope_cells`), a live entity when its location
  does. Rows without a cell are out of any area scope.
- `window_start` / `window_end` bound the row's time (the dataset's time column), half-open.
- `expire_time` is required and in the future; an approval may bring it forward, never push it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import h3  # type: ignore[import-untyped]
from google.protobuf import timestamp_pb2

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_platform.areas import AreaRegistry
from cityos_platform.errors import InvalidArgument, NotFound

RESTRICTED = frozenset({"personal", "sensitive"})
MAX_TERM = timedelta(days=5 * 366)
MAX_COLUMNS = 200
MAX_AREAS = 50


@dataclass(frozen=True)
class Terms:
    columns: tuple[str, ...]
    expire_time: datetime
    areas: tuple[str, ...] = ()
    window_start: datetime | None = None
    window_end: datetime | None = None
    min_group_size: int = 0

    # -- JSON (the database) -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "areas": list(self.areas),
            "window_start": _iso(self.window_start),
            "window_end": _iso(self.window_end),
            "min_group_size": self.min_group_size,
            "expire_time": _iso(self.expire_time),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Terms:
        expire = _parse_iso(data["expire_time"])
        assert expire is not None
        return cls(
            columns=tuple(data.get("columns", ())),
            areas=tuple(data.get("areas", ())),
            window_start=_parse_iso(data.get("window_start")),
            window_end=_parse_iso(data.get("window_end")),
            min_group_size=int(data.get("min_group_size", 0)),
            expire_time=expire,
        )

    # -- protobuf ------------------------------------------------------------------------------------

    def to_proto(self) -> pb.Terms:
        message = pb.Terms(
            columns=list(self.columns), areas=list(self.areas), min_group_size=self.min_group_size
        )
        message.expire_time.FromDatetime(self.expire_time)
        if self.window_start is not None:
            message.window_start.FromDatetime(self.window_start)
        if self.window_end is not None:
            message.window_end.FromDatetime(self.window_end)
        return message

    @classmethod
    def from_proto(cls, message: pb.Terms, field_prefix: str) -> Terms:
        """The terms of a request, with the simple checks (types, sizes, order) done; `validate` checks
        them against the dataset."""
        problems: list[tuple[str, str]] = []
        if not message.HasField("expire_time"):
            problems.append((f"{field_prefix}.expire_time", "required: every agreement ends"))
        if len(message.columns) == 0:
            problems.append((f"{field_prefix}.columns", "name at least one column"))
        if len(message.columns) > MAX_COLUMNS:
            problems.append((f"{field_prefix}.columns", f"at most {MAX_COLUMNS}"))
        if len(set(message.columns)) != len(message.columns):
            problems.append((f"{field_prefix}.columns", "a column is named twice"))
        if len(message.areas) > MAX_AREAS:
            problems.append((f"{field_prefix}.areas", f"at most {MAX_AREAS}"))
        if message.min_group_size < 0 or message.min_group_size > 1_000_000:
            problems.append((f"{field_prefix}.min_group_size", "0 (row-level) or 2 to 1000000"))
        elif message.min_group_size == 1:
            problems.append(
                (f"{field_prefix}.min_group_size", "a floor of 1 suppresses nothing; use 0 or 2+")
            )
        start = _stamp(message, "window_start")
        end = _stamp(message, "window_end")
        if start is not None and end is not None and end <= start:
            problems.append((f"{field_prefix}.window_end", "must be after window_start"))
        if problems:
            raise InvalidArgument.many(problems)
        expire = _stamp(message, "expire_time")
        assert expire is not None
        return cls(
            columns=tuple(message.columns),
            areas=tuple(message.areas),
            window_start=start,
            window_end=end,
            min_group_size=int(message.min_group_size),
            expire_time=expire,
        )

    # -- checks ----------------------------------------------------------------------------------------

    def validate(
        self, classification: Mapping[str, str], areas: AreaRegistry, now: datetime, field_prefix: str
    ) -> None:
        """Against the dataset (its columns and their classification) and the area registry."""
        problems: list[tuple[str, str]] = []
        unknown = [name for name in self.columns if name not in classification]
        if unknown:
            problems.append((f"{field_prefix}.columns", f"not fields of the dataset: {', '.join(unknown)}"))
        restricted = sorted(name for name in self.columns if classification.get(name) in RESTRICTED)
        if restricted and self.min_group_size < 2:
            problems.append(
                (
                    f"{field_prefix}.min_group_size",
                    f"personal or sensitive columns ({', '.join(restricted)}) need an aggregation floor "
                    "of at least 2",
                )
            )
        for index, name in enumerate(self.areas):
            try:
                resolve_area(areas, name)
            except (InvalidArgument, NotFound):
                problems.append((f"{field_prefix}.areas[{index}]", f"{name!r} is no area name or h3:<cell>"))
        if self.expire_time <= now:
            problems.append((f"{field_prefix}.expire_time", "must be in the future"))
        elif self.expire_time > now + MAX_TERM:
            problems.append((f"{field_prefix}.expire_time", "at most five years ahead"))
        if problems:
            raise InvalidArgument.many(problems)

    def narrowing_problems(self, requested: Terms, field_prefix: str) -> list[tuple[str, str]]:
        """Why these (granted) terms are not within the requested ones; empty when they are."""
        problems: list[tuple[str, str]] = []
        extra = [name for name in self.columns if name not in requested.columns]
        if extra:
            problems.append((f"{field_prefix}.columns", f"not asked for: {', '.join(extra)}"))
        if requested.areas:
            if not self.areas:
                problems.append((f"{field_prefix}.areas", f"must stay within {', '.join(requested.areas)}"))
            else:
                outside = [name for name in self.areas if name not in requested.areas]
                if outside:
                    problems.append((f"{field_prefix}.areas", f"not asked for: {', '.join(outside)}"))
        if requested.window_start is not None and (
            self.window_start is None or self.window_start < requested.window_start
        ):
            problems.append((f"{field_prefix}.window_start", "must not start before the requested window"))
        if requested.window_end is not None and (
            self.window_end is None or self.window_end > requested.window_end
        ):
            problems.append((f"{field_prefix}.window_end", "must not end after the requested window"))
        if self.min_group_size < requested.min_group_size:
            problems.append((f"{field_prefix}.min_group_size", "must not be below the requested floor"))
        if self.expire_time > requested.expire_time:
            problems.append((f"{field_prefix}.expire_time", "must not be after the requested expiry"))
        return problems


@dataclass(frozen=True)
class Grant:
    """An agreement in force, as a read applies it."""

    agreement_id: str
    dataset_id: str
    owner_organization: str
    consumer_organization: str
    purpose: str
    terms: Terms
    scope_cells: frozenset[str] | None = field(default=None)  # None: no area scope

    @property
    def name(self) -> str:
        return f"agreements/{self.agreement_id}"

    def in_force(self, now: datetime) -> bool:
        return now < self.terms.expire_time

    def with_cells(self, areas: AreaRegistry) -> Grant:
        if not self.terms.areas:
            return self
        return replace(self, scope_cells=scope_cells(areas, self.terms.areas))


def resolve_area(areas: AreaRegistry, name: str) -> frozenset[str]:
    """The cells whose centres lie in the area (`h3:<cell>`: that cell alone)."""
    if name.startswith("h3:"):
        cell = name[3:]
        if not h3.is_valid_cell(cell) or h3.get_resolution(cell) != 9:
            raise InvalidArgument.field("areas", f"{name!r} is not an H3 cell of resolution 9")
        return frozenset({cell})
    return _named_cells(areas, areas.get(name).name)


def _named_cells(areas: AreaRegistry, name: str) -> frozenset[str]:
    area = areas.get(name)
    return frozenset(cell for cell in area.cells if area.contains(*h3.cell_to_latlng(cell)))


def scope_cells(areas: AreaRegistry, names: Iterable[str]) -> frozenset[str]:
    cells: set[str] = set()
    for name in names:
        cells |= resolve_area(areas, name)
    return frozenset(cells)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _parse_iso(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _stamp(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, name)
    return value.ToDatetime(tzinfo=UTC)
