"""Enforcement: how an agreement (or an open-data publication) shapes a read of a lake table.

A read names the columns it wants, conditions, a time range, and — under an aggregation floor — the
columns to group by and the aggregates. `plan` checks it against the grant and the dataset and returns
what to read; `cityos_datashare.engine` runs it. The rules:

- **Columns.** Every column the read touches (returned, filtered on, grouped by, aggregated) must be
  granted; any other is refused (PERMISSION_DENIED, reason COLUMNS_NOT_GRANTED, the columns named) —
  filtering on a column one may not read would leak it one comparison at a time.
- **Rows.** The scope is applied by the service, never by the caller: the agreement's time window cut
  with the request's range on the dataset's time column, and its areas as the set of H3 cells whose
  centres lie in them (`terms.scope_cells`) on the dataset's area column. Rows outside never leave.
- **Aggregation floor.** With `min_group_size` k > 0, only grouped reads are allowed
  (FAILED_PRECONDITION AGGREGATION_REQUIRED otherwise); every group returns `row_count`; groups with fewer
  than k rows are suppressed and only counted (`suppressed_groups`). Personal and sensitive columns may
  only be aggregated with COUNT, SUM or MEAN: they may not be group keys, filter columns or MIN/MAX
  arguments, each of which would single out one row's value.
- **Limits.** At most `limit` rows or groups, and never more than the service's `max_rows`.

The same plan serves open data: a publication is a grant to everyone, without window or areas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_datashare.models import DatasetRow
from cityos_datashare.terms import RESTRICTED, Grant
from cityos_platform.errors import FailedPrecondition, InvalidArgument, PermissionDenied

MAX_CONDITIONS = 50
MAX_IN_VALUES = 1000
OPERATORS: dict[int, str] = {
    pb.OPERATOR_EQ: "==",
    pb.OPERATOR_NE: "!=",
    pb.OPERATOR_LT: "<",
    pb.OPERATOR_LE: "<=",
    pb.OPERATOR_GT: ">",
    pb.OPERATOR_GE: ">=",
    pb.OPERATOR_IN: "in",
}
FUNCTIONS: dict[int, str] = {
    pb.AGGREGATE_FUNCTION_COUNT: "count",
    pb.AGGREGATE_FUNCTION_SUM: "sum",
    pb.AGGREGATE_FUNCTION_MEAN: "mean",
    pb.AGGREGATE_FUNCTION_MIN: "min",
    pb.AGGREGATE_FUNCTION_MAX: "max",
}
RESTRICTED_FUNCTIONS = frozenset({"count", "sum", "mean"})


@dataclass(frozen=True)
class Measure:
    function: str  # count | sum | mean | min | max
    column: str

    @property
    def output(self) -> str:
        return f"{self.column}_{self.function}"


@dataclass(frozen=True)
class ReadSpec:
    """What a read asks for, as protobuf carried it."""

    columns: tuple[str, ...]
    conditions: tuple[Any, ...]  # pb.Condition
    start: datetime | None
    end: datetime | None
    group_by: tuple[str, ...]
    measures: tuple[Measure, ...]
    limit: int

    @classmethod
    def from_proto(cls, request: Any, prefix: str = "") -> ReadSpec:
        problems: list[tuple[str, str]] = []
        start = request.start_time.ToDatetime(tzinfo=UTC) if request.HasField("start_time") else None
        end = request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None
        if start is not None and end is not None and end <= start:
            problems.append((f"{prefix}end_time", "must be after start_time"))
        if request.limit < 0:
            problems.append((f"{prefix}limit", "must not be negative"))
        conditions = tuple(request.filter)
        if len(conditions) > MAX_CONDITIONS:
            problems.append((f"{prefix}filter", f"at most {MAX_CONDITIONS} conditions"))
        for index, condition in enumerate(conditions):
            where = f"{prefix}filter[{index}]"
            if condition.operator not in OPERATORS:
                problems.append((f"{where}.operator", "EQ, NE, LT, LE, GT, GE or IN"))
            elif condition.operator == pb.OPERATOR_IN:
                if not 1 <= len(condition.values) <= MAX_IN_VALUES:
                    problems.append((f"{where}.values", f"1 to {MAX_IN_VALUES} values for IN"))
            elif condition.values:
                problems.append((f"{where}.values", "only for IN; use value"))
        measures: list[Measure] = []
        for index, aggregate in enumerate(getattr(request, "aggregates", ())):
            function = FUNCTIONS.get(aggregate.function)
            if function is None:
                problems.append((f"{prefix}aggregates[{index}].function", "COUNT, SUM, MEAN, MIN or MAX"))
            elif function != "count" and not aggregate.column:
                problems.append((f"{prefix}aggregates[{index}].column", "required"))
            else:
                measures.append(Measure(function, aggregate.column))
        if problems:
            raise InvalidArgument.many(problems)
        return cls(
            columns=tuple(getattr(request, "columns", ())),
            conditions=conditions,
            start=start,
            end=end,
            group_by=tuple(getattr(request, "group_by", ())),
            measures=tuple(m for m in measures if m.function != "count" or m.column),
            limit=int(request.limit),
        )


@dataclass(frozen=True)
class Plan:
    """A checked read: what the engine reads and how it shapes the result."""

    table: str
    read_columns: tuple[str, ...]  # what is read from the files
    output_columns: tuple[str, ...]  # row-level reads: what is returned
    filters: tuple[tuple[str, str, Any], ...]  # pyarrow DNF (one conjunction)
    start: datetime | None
    end: datetime | None
    group_by: tuple[str, ...]
    measures: tuple[Measure, ...]
    min_group_size: int
    limit: int
    empty: bool = False  # the scope and the request cannot overlap: nothing to read

    @property
    def aggregated(self) -> bool:
        return bool(self.group_by)

    @property
    def returned_columns(self) -> tuple[str, ...]:
        if self.aggregated:
            return (*self.group_by, "row_count", *(m.output for m in self.measures))
        return self.output_columns


def _types(dataset: DatasetRow) -> dict[str, str]:
    return {entry["name"]: entry.get("type", "") for entry in dataset.fields}


def parse_value(text: str, type_name: str, field: str) -> Any:
    """A condition's text as a value of the column's Arrow type."""
    try:
        if type_name.startswith("timestamp"):
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if type_name.startswith(("int", "uint")):
            return int(text)
        if type_name in ("double", "float", "halffloat") or type_name.startswith("decimal"):
            return float(text)
        if type_name == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
    except ValueError:
        raise InvalidArgument.field(field, f"{text!r} is not a value of type {type_name}") from None
    return text


def plan(
    dataset: DatasetRow,
    columns_granted: Sequence[str],
    classification: Mapping[str, str],
    read: ReadSpec,
    *,
    min_group_size: int,
    grant: Grant | None,
    max_rows: int,
) -> Plan:
    """Check a read against what is granted and build its plan (see the module doc)."""
    granted = set(columns_granted)
    types = _types(dataset)
    wanted = read.columns or tuple(c for c in columns_granted)
    touched = {
        *wanted,
        *(c.column for c in read.conditions),
        *read.group_by,
        *(m.column for m in read.measures),
    }
    unknown = sorted(name for name in touched if name not in types)
    if unknown:
        raise InvalidArgument.field("columns", f"not fields of {dataset.dataset_id}: {', '.join(unknown)}")
    refused = sorted(touched - granted)
    if refused:
        raise PermissionDenied(
            f"not granted: {', '.join(refused)} (granted: {', '.join(sorted(granted))})",
            reason="COLUMNS_NOT_GRANTED",
            metadata={"columns": ",".join(refused)},
        )
    restricted = {name for name in granted if classification.get(name) in RESTRICTED}
    if min_group_size > 0 and not read.group_by:
        raise FailedPrecondition(
            f"reads under an aggregation floor of {min_group_size} must group (group_by) and aggregate",
            reason="AGGREGATION_REQUIRED",
            metadata={"min_group_size": str(min_group_size)},
        )
    singled_out = sorted(
        {*(set(read.group_by) & restricted), *({c.column for c in read.conditions} & restricted)}
        | {
            m.column
            for m in read.measures
            if m.column in restricted and m.function not in RESTRICTED_FUNCTIONS
        }
    )
    if singled_out:
        raise PermissionDenied(
            f"personal or sensitive columns ({', '.join(singled_out)}) may only be aggregated with COUNT, "
            "SUM or MEAN, never grouped by, filtered on or taken MIN/MAX of",
            reason="RESTRICTED_COLUMN_USE",
            metadata={"columns": ",".join(singled_out)},
        )
    if not read.group_by and restricted & set(wanted):
        raise PermissionDenied(
            "personal or sensitive columns leave only aggregated", reason="RESTRICTED_COLUMN_USE"
        )
    filters: list[tuple[str, str, Any]] = []
    for index, condition in enumerate(read.conditions):
        type_name = types[condition.column]
        operator = OPERATORS[condition.operator]
        field = f"filter[{index}]"
        if operator == "in":
            values = [parse_value(v, type_name, f"{field}.values") for v in condition.values]
            filters.append((condition.column, "in", values))
        else:
            filters.append(
                (condition.column, operator, parse_value(condition.value, type_name, f"{field}.value"))
            )
    start, end = read.start, read.end
    empty = False
    if grant is not None:
        terms = grant.terms
        if terms.window_start is not None:
            start = terms.window_start if start is None else max(start, terms.window_start)
        if terms.window_end is not None:
            end = terms.window_end if end is None else min(end, terms.window_end)
        if grant.scope_cells is not None:
            if not dataset.area_column:
                empty = True  # rows that cannot be placed are outside any area scope
            else:
                filters.append((dataset.area_column, "in", sorted(grant.scope_cells)))
                empty = empty or not grant.scope_cells
    if start is not None and end is not None and end <= start:
        empty = True
    if start is not None or end is not None:
        time_type = types.get(dataset.time_column, "")
        if not time_type.startswith("timestamp"):
            raise FailedPrecondition(f"{dataset.dataset_id} has no time column", reason="NO_TIME_COLUMN")
    limit = min(read.limit or max_rows, max_rows)
    if read.group_by:
        read_columns = tuple(dict.fromkeys([*read.group_by, *(m.column for m in read.measures)]))
    else:
        read_columns = tuple(dict.fromkeys(wanted))
    return Plan(
        table=dataset.dataset_id,
        read_columns=read_columns,
        output_columns=tuple(wanted),
        filters=tuple(filters),
        start=start,
        end=end,
        group_by=read.group_by,
        measures=read.measures,
        min_group_size=min_group_size,
        limit=limit,
        empty=empty,
    )


def check_publication(dataset: DatasetRow, publication: pb.OpenDataPublication) -> dict[str, Any]:
    """An open-data publication checked against the dataset: without aggregation only public columns;
    with it a floor of at least 2, group keys public, restricted columns only counted, summed or averaged."""
    classification = {entry["name"]: entry.get("classification", "internal") for entry in dataset.fields}
    problems: list[tuple[str, str]] = []
    columns = list(publication.columns)
    if not columns:
        problems.append(("publication.columns", "name at least one column"))
    unknown = [c for c in [*columns, *publication.group_by] if c not in classification]
    if unknown:
        problems.append(("publication.columns", f"not fields of the dataset: {', '.join(unknown)}"))
    aggregates = []
    for index, aggregate in enumerate(publication.aggregates):
        function = FUNCTIONS.get(aggregate.function)
        if function is None or (function != "count" and aggregate.column not in columns):
            problems.append((f"publication.aggregates[{index}]", "a function over a published column"))
        else:
            aggregates.append({"function": int(aggregate.function), "column": aggregate.column})
    if publication.group_by:
        if publication.min_group_size < 2:
            problems.append(("publication.min_group_size", "at least 2 when aggregating"))
        missing = [c for c in publication.group_by if c not in columns]
        if missing:
            problems.append(
                ("publication.group_by", f"group keys must be published columns: {', '.join(missing)}")
            )
        keys = [c for c in publication.group_by if classification.get(c) != "public"]
        if keys:
            problems.append(("publication.group_by", f"group keys must be public columns: {', '.join(keys)}"))
    else:
        if publication.min_group_size:
            problems.append(("publication.min_group_size", "only with group_by"))
        private = [c for c in columns if classification.get(c) != "public"]
        if private:
            problems.append(
                ("publication.columns", f"without aggregation only public columns: {', '.join(private)}")
            )
    if dataset.kind != pb.DATASET_KIND_LAKE_TABLE:
        problems.append(("name", "only lake tables are published as open data"))
    if problems:
        raise InvalidArgument.many(problems)
    return {
        "columns": columns,
        "group_by": list(publication.group_by),
        "aggregates": aggregates,
        "min_group_size": int(publication.min_group_size),
    }


def arrow_type_names(schema: pa.Schema) -> dict[str, str]:
    return {f.name: str(f.type) for f in schema}
