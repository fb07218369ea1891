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

Each Dask partition is a run of files of about `PARTITION_BYTES` on disk. Strings come as
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

    def arrow(self, paths: Sequence[str]) -> pa.Table:
        """The selected columns of the rows of `paths` that pass the filter, as an Arrow table."""
        options = ds.ParquetFragmentScanOptions(pre_buffer=self.pre_buffer)
        fmt = ds.ParquetFileFormat(default_fragment_scan_options=options)
        dataset = ds.dataset(list(paths), schema=self.schema, format=fmt, filesystem=self.fs)
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
) -> ReadPlan:
    """Check a query and find what it reads (shared by `read_table` and `read_dataset`)."""
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
    return ReadPlan(spec, selected, _partitions(files, PARTITION_BYTES), reader, token)


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
    import ray
    import ray.data

    plan = plan_read(name, start, end, columns, filters, lake=lake)
    if not plan.groups:
        return ray.data.from_arrow(plan.empty())
    read = ray.remote(_read_arrow)
    reader = ray.put(plan.reader)
    refs: list[Any] = [read.remote(reader, group) for group in plan.groups]
    return ray.data.from_arrow_refs(refs)
