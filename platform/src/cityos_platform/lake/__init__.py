"""The CityOS data lake: Parquet tables on a local folder or S3, written exactly once, read with pushdown.

- `location`: `LakeSettings` (`CITYOS_LAKE_*`) and `Lake` — the root, its fsspec filesystem (local or
  s3fs), atomic writes, listing, bucket setup and presigned URLs (minio SDK).
- `tables`: the registry of tables (`REGISTRY`, `table(name)`), each a versioned `TableSpec`; installed
  packages add their output tables through the `cityos.lake_tables` entry points (`all_tables()`).
- `files`: the layout (`<table>/dt=YYYY-MM-DD/part-<id>.parquet`), idempotent `write_rows`, `compact`.
- `read`: `read_table(name, start, end, columns, filters)` as a Dask DataFrame, `read_dataset` as a Ray
  Dataset (the `ray` extra), `aggregate_table` (a group-by aggregated per partition by Arrow), and
  `table_files`.

Only code that uses the lake imports this package (it needs the `cityos-platform[lake]` extra:
pyarrow, fsspec, s3fs, minio, dask), so the services' processes never load those libraries.
"""

from __future__ import annotations

from cityos_platform.lake.files import compact, live_files, partition_path, write_rows
from cityos_platform.lake.location import Lake, LakeError, LakeSettings
from cityos_platform.lake.read import aggregate_table, read_dataset, read_table, table_files
from cityos_platform.lake.tables import REGISTRY, TableSpec, all_tables, table

__all__ = [
    "REGISTRY",
    "Lake",
    "LakeError",
    "LakeSettings",
    "TableSpec",
    "aggregate_table",
    "all_tables",
    "compact",
    "live_files",
    "partition_path",
    "read_dataset",
    "read_table",
    "table",
    "table_files",
    "write_rows",
]
