"""Reading lake tables as Dask DataFrames, reading no more than the query needs.

`read_table(name, start, end, columns, filters)` returns a lazy Dask DataFrame of a registered table,
and `read_dataset` (same arguments) the same rows as a Ray Dataset, through the same reader:

- partition pruning: it lists the table's folder once for its `dt=` partitions and lists files only in
  those that overlap [start, end) (UTC; a naive datetime is taken as UTC), applying each partition's
  compaction manifest (`files.live_files`);
- projection and predicate pushdown: each Dask partition reads its files with `pyarrow.dataset`, asking
  only for `columns` (plus those the filters name) and handing `filters` (pyarrow's DNF list of tuples,
  as `pyarrow.parquet` and `dask.dataframe.read_parquet` take them) to the Parquet reader, which skips
  row groups whose statistics rule them out and reads only the selected columns' chunks;
- the time window is also a row filter, but only when it cuts a day (a window of whole days needs
  none, so a one-day query of two columns reads exactly those two columns);
- schema evolution: every file is read with the registry's (latest) schema, so files written before a
  column was added read with that column null, alongside newer files.

Why not `dask.dataframe.read_parquet` itself (dask 2026.8): over a list of files it takes the schema of
the first file (an older file hides the newer columns, and passing the registry's schema is refused), adds
a `dt` column from the Hive path, and on a local lake pre-buffers reads so that small files are read
whole. Reading through `dask.dataframe.from_map` with pyarrow's dataset reader keeps every promise
above. Locally each column chunk is one read; on S3 reads are pre-buffered (pyarrow coalesces only gaps
under 8 KiB, so skipped columns stay unread) and the filesystem does no read-ahead of its own. Besides
the chunks, the Parquet reader reads the last 64 KiB of each file it opens, to find the footer.

Each Dask partition is a run of files of about `PARTITION_BYTES` on disk.

`aggregate_table(name, by, aggregations, start, end, filters)` is a group-by with count, sum, min, max
and mean over the same plan, each partition (of about `AGGREGATE_PARTITION_BYTES`) aggregated by Arrow
with the string columns read as Parquet dictionaries, Dask combining the partial results: `bench/lake.py`
measures it within 2x of DuckDB on the same files, where `read_table` plus a pandas group-by of the
decoded strings is about 7x. Strings come as
`string[pyarrow]`, integers and booleans as pandas' nullable types, times as `datetime64[us, UTC]`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cityos_platform.lake.files import live_files_sized, partition_day
from cityos_platform.lake.location import Lake, LakeSettings
from cityos_platform.lake.tables import TableSpec, table

if TYPE_CHECKING:
    import dask.dataframe as dd
    import fsspec
    import ray.data

PARTITION_BYTES = 128 * 1024 * 1024
#: `aggregate_table`'s partitions are smaller: each returns only its partial aggregates, so more of them
#: cost little and spread the work evenly over the workers (a compacted day file is one partition).
AGGREGATE_PARTITION_BYTES = 32 * 1024 * 1024
Filters = list[tuple[str, str, Any]] | list[list[tuple[str, str, Any]]]


def default_lake() -> Lake:
    """The lake of this process's settings (`CITYOS_LAKE_*`, `CITYOS_VAR_DIR`)."""
    from cityos_platform.config import load_settings

    return Lake.from_settings(LakeSettings(), load_settings().var_dir)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _overlaps(day: date, start: datetime | None, end: datetime | None) -> bool:
    first = _midnight(day)
    return (start is None or first + timedelta(days=1) > start) and (end is None or first < end)


def _files(
    spec: TableSpec, start: datetime | None, end: datetime | None, lake: Lake
) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for folder in lake.list_folders(lake.path(spec.name)):
        day = partition_day(folder)
        if day is not None and _overlaps(day, start, end):
            found.extend(live_files_sized(lake, spec, day))
    return found


def table_files(
    name: str, start: datetime | None = None, end: datetime | None = None, lake: Lake | None = None
) -> list[str]:
    """The files `read_table(name, start, end)` reads: the live files of the partitions overlapping
    [start, end), in day order."""
    lake = lake or default_lake()
    return [path for path, _ in _files(table(name), _utc(start), _utc(end), lake)]


def _pandas_type(type_: pa.DataType) -> Any:
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return pd.StringDtype("pyarrow")
    if pa.types.is_boolean(type_):
        return pd.BooleanDtype()
    if pa.types.is_integer(type_):
        return pd.api.types.pandas_dtype(str(type_).capitalize().replace("Uint", "UInt"))
    return None


def to_pandas(data: pa.Table) -> pd.DataFrame:
    """An Arrow table as the lake's pandas frame (the dtypes `read_table` promises)."""
    return data.to_pandas(types_mapper=_pandas_type, ignore_metadata=True)


class _ReadFiles:
    """One Dask partition: some files of a table, read with pushdown (a picklable callable)."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        schema: pa.Schema,
        columns: list[str],
        filter_: ds.Expression | None,
        pre_buffer: bool,
        token: str,
    ) -> None:
        self.fs, self.schema, self.columns, self.filter, self.pre_buffer = (
            fs,
            schema,
            columns,
            filter_,
            pre_buffer,
        )
        self.token = token

    def __dask_tokenize__(self) -> str:
        """Dask names the graph's tasks by this: the lake, table, files, columns and filter read."""
        return self.token

    def string_columns(self) -> list[str]:
        """The selected columns that hold strings."""
        return [f.name for f in self.schema if f.name in self.columns and pa.types.is_string(f.type)]

    def arrow(self, paths: Sequence[str], *, dictionaries: bool = False) -> pa.Table:
        """The selected columns of the rows of `paths` that pass the filter, as an Arrow table; with
        `dictionaries`, the string columns as Parquet stored them, dictionary-encoded (never decoded)."""
        options = ds.ParquetFragmentScanOptions(pre_buffer=self.pre_buffer)
        schema = self.schema
        if dictionaries:
            strings = self.string_columns()
            read = ds.ParquetReadOptions(dictionary_columns=strings)
            fmt = ds.ParquetFileFormat(read_options=read, default_fragment_scan_options=options)
            schema = pa.schema(
                [
                    pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in strings else f
                    for f in schema
                ]
            )
        else:
            fmt = ds.ParquetFileFormat(default_fragment_scan_options=options)
        dataset = ds.dataset(list(paths), schema=schema, format=fmt, filesystem=self.fs)
        return dataset.to_table(columns=self.columns, filter=self.filter, use_threads=False)

    def __call__(self, paths: Sequence[str]) -> pd.DataFrame:
        return to_pandas(self.arrow(paths))


def _check_columns(spec: TableSpec, names: Sequence[str], what: str) -> None:
    unknown = [name for name in names if name not in spec.schema.names]
    if unknown:
        known = ", ".join(spec.schema.names)
        raise KeyError(f"{spec.name} has no column(s) {', '.join(unknown)} ({what}); it has {known}")


def _filter_columns(filters: Filters) -> list[str]:
    items: list[Any] = list(filters)
    flat = [leaf for item in items for leaf in (item if isinstance(item, list) else [item])]
    return [leaf[0] for leaf in flat]


def _window(spec: TableSpec, start: datetime | None, end: datetime | None) -> ds.Expression | None:
    """The time window as a row filter, for the bounds that cut a day (whole days are pruned already)."""
    time = ds.field(spec.time_column)
    parts = []
    if start is not None and start != _midnight(start.date()):
        parts.append(time >= pa.scalar(start, type=spec.schema.field(spec.time_column).type))
    if end is not None and end != _midnight(end.date()):
        parts.append(time < pa.scalar(end, type=spec.schema.field(spec.time_column).type))
    if not parts:
        return None
    expression = parts[0]
    for part in parts[1:]:
        expression = expression & part
    return expression


def _partitions(files: list[tuple[str, int]], limit: int) -> list[list[str]]:
    groups: list[list[str]] = []
    size = 0
    for path, bytes_ in files:
        if not groups or size + bytes_ > limit:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += bytes_
    return groups


@dataclass(frozen=True)
class ReadPlan:
    """What a query reads: the table, the columns, the partitions' file groups and their reader."""

    spec: TableSpec
    columns: list[str]
    groups: list[list[str]]
    reader: _ReadFiles
    token: str

    def empty(self) -> pa.Table:
        """A table of no rows with the selected columns."""
        return pa.schema([self.spec.schema.field(c) for c in self.columns]).empty_table()


def plan_read(
    name: str,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
    filters: Filters | None = None,
    *,
    lake: Lake | None = None,
    partition_bytes: int = PARTITION_BYTES,
) -> ReadPlan:
    """Check a query and find what it reads (shared by `read_table`, `read_dataset` and
    `aggregate_table`): its files in groups of about `partition_bytes`, one group per partition."""
    spec = table(name)
    lake = lake or default_lake()
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None and end < start:
        raise ValueError(f"end ({end.isoformat()}) is before start ({start.isoformat()})")
    selected = list(dict.fromkeys(columns)) if columns is not None else list(spec.schema.names)
    _check_columns(spec, selected, "columns")
    expression: ds.Expression | None = None
    if filters:
        _check_columns(spec, _filter_columns(filters), "filters")
        expression = pq.filters_to_expression(filters)
    window = _window(spec, start, end)
    if window is not None:
        expression = window if expression is None else expression & window
    files = _files(spec, start, end, lake)
    token = hashlib.sha256(
        repr((lake.url, spec.name, spec.version, files, selected, str(expression))).encode()
    ).hexdigest()
    reader = _ReadFiles(lake.fs, spec.schema, selected, expression, pre_buffer=lake.is_s3, token=token)
    return ReadPlan(spec, selected, _partitions(files, partition_bytes), reader, token)


def read_table(
    name: str,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
    filters: Filters | None = None,
    *,
    lake: Lake | None = None,
) -> dd.DataFrame:
    """Table `name` in [start, end) as a lazy Dask DataFrame (see the module doc); `lake` defaults to the
    settings' lake (`default_lake`)."""
    import dask.dataframe as dd

    plan = plan_read(name, start, end, columns, filters, lake=lake)
    meta = to_pandas(plan.empty())
    if not plan.groups:
        empty: dd.DataFrame = dd.from_pandas(meta, npartitions=1)  # type: ignore[no-untyped-call]
        return empty
    reader: Callable[[Sequence[str]], pd.DataFrame] = plan.reader
    frame: dd.DataFrame = dd.from_map(  # type: ignore[no-untyped-call]
        reader, plan.groups, meta=meta, label=f"lake-{plan.spec.name}", enforce_metadata=True
    )
    return frame


#: What `aggregate_table` computes, and how each splits into per-partition parts and their combination.
AGGREGATES: dict[str, tuple[tuple[str, ...], str]] = {
    "count": (("count",), "sum"),
    "sum": (("sum",), "sum"),
    "min": (("min",), "min"),
    "max": (("max",), "max"),
    "mean": (("sum", "count"), "sum"),
}


class _AggregateFiles:
    """One Dask partition of `aggregate_table`: its files read by Arrow with the string columns as
    Parquet dictionaries (never decoded to Python strings), grouped and aggregated by Arrow's hash
    group-by; only the (small) partial result becomes pandas. A picklable callable."""

    def __init__(self, reader: _ReadFiles, by: list[str], parts: list[tuple[str, str]], token: str) -> None:
        self.reader, self.by, self.parts, self.token = reader, by, parts, token
        self.strings = reader.string_columns()

    def __dask_tokenize__(self) -> str:
        return self.token

    def __call__(self, paths: Sequence[str]) -> pd.DataFrame:
        data = self.reader.arrow(paths, dictionaries=True)
        grouped = data.unify_dictionaries().group_by(self.by, use_threads=False).aggregate(self.parts)
        columns = {
            name: grouped[name].cast(pa.string()) if name in self.strings else grouped[name]
            for name in grouped.column_names
        }
        return to_pandas(pa.table(columns))


def aggregate_table(
    name: str,
    by: Sequence[str],
    aggregations: dict[str, tuple[str, str]],
    start: datetime | None = None,
    end: datetime | None = None,
    filters: Filters | None = None,
    *,
    lake: Lake | None = None,
) -> dd.DataFrame:
    """A group-by over table `name` in [start, end): `aggregations` maps each output column to
    (column, function), the functions being count (non-null values), sum, min, max and mean. The query,
    pushdown and partitions are `read_table`'s; each partition is aggregated by Arrow over its files
    (string keys stay dictionary codes, which is what makes it several times faster than a pandas
    group-by of the decoded strings), and Dask combines the partial results (count and sum add up, min
    and max of the parts, mean = the sums over the counts). Returns a lazy Dask DataFrame indexed by
    `by` (null keys are a group of their own), one column per aggregation."""
    import dask.dataframe as dd

    keys = list(dict.fromkeys(by))
    if not keys:
        raise ValueError("aggregate_table needs at least one column to group by")
    for output, (_column, function) in aggregations.items():
        if function not in AGGREGATES:
            raise ValueError(f"{output}: unknown aggregate {function!r}; known: {', '.join(AGGREGATES)}")
        if output in keys:
            raise ValueError(f"{output}: an output column may not be named like a group key")
    values = [column_name for column_name, _ in aggregations.values()]
    plan = plan_read(
        name, start, end, [*keys, *values], filters, lake=lake, partition_bytes=AGGREGATE_PARTITION_BYTES
    )
    parts = list(
        dict.fromkeys(
            (column_name, part) for column_name, fn in aggregations.values() for part in AGGREGATES[fn][0]
        )
    )
    combine = {f"{column_name}_{part}": AGGREGATES[part][1] for column_name, part in parts}
    partial_meta = to_pandas(
        pa.schema(
            [plan.spec.schema.field(k) for k in keys]
            + [
                pa.field(f"{c}_{part}", pa.int64() if part == "count" else plan.spec.schema.field(c).type)
                for c, part in parts
            ]
        ).empty_table()
    )
    if plan.groups:
        partials: dd.DataFrame = dd.from_map(  # type: ignore[no-untyped-call]
            _AggregateFiles(plan.reader, keys, parts, plan.token + repr(parts)),
            plan.groups,
            meta=partial_meta,
            label=f"lake-aggregate-{plan.spec.name}",
            enforce_metadata=False,
        )
    else:
        partials = dd.from_pandas(partial_meta, npartitions=1)  # type: ignore[no-untyped-call]
    combined = partials.groupby(keys, sort=False, dropna=False).agg(combine)

    def finish(frame: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for output, (column_name, function) in aggregations.items():
            if function == "mean":
                out[output] = frame[f"{column_name}_sum"] / frame[f"{column_name}_count"].astype("float64")
            else:
                out[output] = frame[f"{column_name}_{function}"]
        return pd.DataFrame(out, index=frame.index)

    meta = finish(combined._meta)
    result: dd.DataFrame = combined.map_partitions(finish, meta=meta)
    return result


def _read_arrow(reader: _ReadFiles, paths: Sequence[str]) -> pa.Table:
    return reader.arrow(paths)


def read_dataset(
    name: str,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
    filters: Filters | None = None,
    *,
    lake: Lake | None = None,
) -> ray.data.Dataset:
    """Table `name` in [start, end) as a Ray Dataset: the same query, checks and pushdown as
    `read_table`, one Ray task per group of files (the same reader), Arrow blocks with the registry's
    schema. Needs Ray connected (`ray.init(...)`) or starts a local one as Ray does; install the
    `cityos-platform[ray]` extra."""
    import os

    # See cityos_analytics/__init__.py: Ray's `uv run` worker hook breaks workers under `uv run`.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray
    import ray.data

    plan = plan_read(name, start, end, columns, filters, lake=lake)
    if not plan.groups:
        return ray.data.from_arrow(plan.empty())
    read = ray.remote(_read_arrow)
    reader = ray.put(plan.reader)
    refs: list[Any] = [read.remote(reader, group) for group in plan.groups]
    return ray.data.from_arrow_refs(refs)
