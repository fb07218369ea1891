"""Writing lake tables: day partitions, deterministic part files, schema casting, and compaction.

Layout: `<root>/<table>/dt=YYYY-MM-DD/part-<part_id>.parquet`, the day being the UTC date of the row's
`time_column` (Hive-style, so any Parquet reader sees `dt` as a partition). Every file carries the
table's name and schema version in its key-value metadata (`cityos.table`, `cityos.table.version`).

`write_rows(lake, spec, rows, part_id)` casts `rows` to the table's schema (`conform`: missing nullable
columns become null; a missing or null non-nullable column, an unknown column or a value that does not
cast is a ValueError naming the column), splits them by day, sorts each day by time (so row-group
statistics on time prune well) and writes each day's rows atomically to the same file name, derived only
from `part_id`. Writing the same `part_id` with the same rows again overwrites those files with the same
rows: a writer that crashed after writing but before recording it simply writes again (idempotent).

Compaction (`compact`) merges a partition's small files into files of about `target_bytes` without a
reader ever seeing a row twice or missing one. A per-partition manifest `_compaction.json` (hidden from
`list_files`) holds two lists: `live` — the compacted outputs readers may use — and `retired` — the
inputs they replaced. `live_files` (what readers read) is every data file of the partition except the
retired ones and the compacted outputs that are not live. Compacting writes the output (named from the
hash of its sorted input names, so a retry produces the same name), then the manifest in one atomic
write — the instant the output replaces its inputs for every reader — then deletes the inputs. A crash
before the manifest leaves an unused output (ignored, overwritten or removed by the next run); after it,
leftover inputs are retired (ignored, removed by the next run). Retired names are kept for good: a
writer that rewrites a part it had already written (the idempotent retry above) after that part was
compacted writes a retired name, which readers ignore, so its rows still count once. One compaction at
a time per partition (the exporter, the lake's single writer, runs it); a reader that listed a partition
just before its inputs were deleted may fail with FileNotFoundError and must simply read again.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cityos_platform.lake.location import Lake, is_data_file
from cityos_platform.lake.tables import TableSpec

PART_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")
TABLE_KEY = b"cityos.table"
VERSION_KEY = b"cityos.table.version"
MANIFEST = "_compaction.json"
COMPACT_PREFIX = "compact-"
#: Rows per row group: small enough that statistics prune a day's file, large enough to scan fast.
ROW_GROUP_ROWS = 131_072
MiB = 1024 * 1024


def partition_path(lake: Lake, spec: TableSpec, day: date) -> str:
    """`<root>/<table>/dt=YYYY-MM-DD`."""
    return lake.path(spec.name, f"dt={day.isoformat()}")


def part_path(lake: Lake, spec: TableSpec, day: date, part_id: str) -> str:
    return posixpath.join(partition_path(lake, spec, day), f"part-{part_id}.parquet")


def partition_day(folder: str) -> date | None:
    """The day of a `dt=YYYY-MM-DD` folder (None for anything else)."""
    name = posixpath.basename(folder.rstrip("/"))
    if not name.startswith("dt="):
        return None
    try:
        return date.fromisoformat(name[3:])
    except ValueError:
        return None


def conform(spec: TableSpec, rows: pa.Table) -> pa.Table:
    """`rows` as a table of `spec.schema` (its columns in its order), or ValueError naming the columns."""
    unknown = [name for name in rows.column_names if name not in spec.schema.names]
    if unknown:
        raise ValueError(
            f"{spec.name}: unknown column(s) {', '.join(unknown)} (not in version {spec.version})"
        )
    missing = [f.name for f in spec.schema if not f.nullable and f.name not in rows.column_names]
    if missing:
        raise ValueError(f"{spec.name}: missing non-nullable column(s) {', '.join(missing)}")
    arrays: list[pa.ChunkedArray | pa.Array] = []
    for f in spec.schema:
        if f.name not in rows.column_names:
            arrays.append(pa.nulls(rows.num_rows, type=f.type))
            continue
        values = rows.column(f.name)
        if values.type != f.type:
            try:
                values = pc.cast(values, f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
                raise ValueError(
                    f"{spec.name}: column {f.name} ({values.type}) does not cast to {f.type}: {error}"
                ) from None
        if not f.nullable and values.null_count:
            raise ValueError(
                f"{spec.name}: column {f.name} is not nullable but has {values.null_count} null(s)"
            )
        arrays.append(values)
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def with_version(spec: TableSpec, table: pa.Table) -> pa.Table:
    """The table with the spec's name and version in its schema metadata."""
    metadata = dict(table.schema.metadata or {})
    metadata[TABLE_KEY] = spec.name.encode()
    metadata[VERSION_KEY] = str(spec.version).encode()
    return table.replace_schema_metadata(metadata)


def file_version(metadata: pq.FileMetaData) -> int | None:
    """The table version a file was written with (None: written by something else)."""
    value = (metadata.metadata or {}).get(VERSION_KEY)
    return int(value) if value is not None else None


def split_by_day(spec: TableSpec, table: pa.Table) -> list[tuple[date, pa.Table]]:
    """The rows of each UTC day of the time column, each day's rows sorted by time (stable)."""
    if table.num_rows == 0:
        return []
    days = pc.cast(table.column(spec.time_column), pa.date32())
    out = []
    for day in sorted(pc.unique(days).to_pylist()):
        rows = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        out.append((day, rows.sort_by([(spec.time_column, "ascending")])))
    return out


def write_rows(
    lake: Lake, spec: TableSpec, rows: pa.Table, part_id: str, *, row_group_rows: int = ROW_GROUP_ROWS
) -> list[str]:
    """Write `rows` as part `part_id` of each UTC day they touch; returns the paths written, by day.

    Idempotent: the same `part_id` and rows give the same files. See the module doc.
    """
    if not PART_ID.match(part_id):
        raise ValueError(f"part id {part_id!r}: 1 to 200 of [A-Za-z0-9._=-], starting with a letter or digit")
    table = with_version(spec, conform(spec, rows))
    written = []
    for day, day_rows in split_by_day(spec, table):
        path = part_path(lake, spec, day, part_id)
        lake.write_parquet_atomic(day_rows, path, row_group_size=row_group_rows)
        written.append(path)
    return written


# -- compaction ----------------------------------------------------------------------------------


def _manifest_path(lake: Lake, spec: TableSpec, day: date) -> str:
    return posixpath.join(partition_path(lake, spec, day), MANIFEST)


def read_manifest(lake: Lake, spec: TableSpec, day: date) -> dict[str, list[str]]:
    """The partition's compaction manifest (`live` and `retired` file names; both empty when none)."""
    path = _manifest_path(lake, spec, day)
    try:
        data = json.loads(lake.read_bytes(path))
    except FileNotFoundError:
        return {"live": [], "retired": []}
    return {"live": list(data.get("live", [])), "retired": list(data.get("retired", []))}


def _is_live(name: str, manifest: dict[str, list[str]], retired: set[str]) -> bool:
    if name in retired:
        return False
    return not name.startswith(COMPACT_PREFIX) or name in manifest["live"]


def live_files(lake: Lake, spec: TableSpec, day: date) -> list[str]:
    """The data files of a day that readers read (the manifest applied), sorted."""
    return [path for path, _ in live_files_sized(lake, spec, day)]


def live_files_sized(lake: Lake, spec: TableSpec, day: date) -> list[tuple[str, int]]:
    """`live_files` with their sizes (one listing; the manifest is read only when there is one)."""
    folder = partition_path(lake, spec, day)
    entries = lake.list_all(folder)
    files = [(p, size) for p, size in entries if is_data_file(p) and posixpath.dirname(p) == folder]
    if not files:
        return []
    has_manifest = any(posixpath.basename(p) == MANIFEST for p, _ in entries)
    manifest = read_manifest(lake, spec, day) if has_manifest else {"live": [], "retired": []}
    retired = set(manifest["retired"])
    return [(path, size) for path, size in files if _is_live(posixpath.basename(path), manifest, retired)]


def read_file(lake: Lake, spec: TableSpec, path: str) -> pa.Table:
    """One file of the table, whatever version wrote it, as a table of the latest schema."""
    with lake.fs.open(path, "rb") as source:
        table = pq.read_table(source)
    return conform(spec, table.replace_schema_metadata(None))


def compact(lake: Lake, spec: TableSpec, day: date, target_bytes: int = 64 * MiB) -> list[str]:
    """Merge the day's files smaller than `target_bytes` into files of about `target_bytes`; returns the
    compacted files written (none when there was nothing to merge). Exactly-once safe: see the module doc.
    """
    folder = partition_path(lake, spec, day)
    manifest = read_manifest(lake, spec, day)
    retired = set(manifest["retired"])
    sizes: dict[str, int] = {}
    for path, size in lake.list_files_sized(folder):
        if _is_live(posixpath.basename(path), manifest, retired):
            sizes[path] = size
        else:  # a leftover of an interrupted run: a retired input, or an output that never went live
            lake.delete(path)
    bins: list[list[str]] = []
    current: list[str] = []
    total = 0
    for path in sorted(p for p, size in sizes.items() if size < target_bytes):
        current.append(path)
        total += sizes[path]
        if total >= target_bytes:
            bins.append(current)
            current, total = [], 0
    if current:
        bins.append(current)
    bins = [group for group in bins if len(group) > 1]
    if not bins:
        return []
    outputs = []
    for group in bins:
        names = sorted(posixpath.basename(path) for path in group)
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:24]
        output = posixpath.join(folder, f"{COMPACT_PREFIX}{digest}.parquet")
        merged = pa.concat_tables([read_file(lake, spec, path) for path in group])
        merged = with_version(spec, merged.sort_by([(spec.time_column, "ascending")]))
        lake.write_parquet_atomic(merged, output, row_group_size=ROW_GROUP_ROWS)
        outputs.append(output)
    inputs = {posixpath.basename(path) for group in bins for path in group}
    new_manifest = {
        "live": sorted((set(manifest["live"]) - inputs) | {posixpath.basename(p) for p in outputs}),
        "retired": sorted(retired | inputs),
        "updated": datetime.now(UTC).isoformat(),
    }
    lake.write_bytes_atomic(json.dumps(new_manifest, indent=1).encode(), _manifest_path(lake, spec, day))
    for group in bins:
        for path in group:
            lake.delete(path)
    return outputs
