"""The lake tables the jobs write, installed into the lake's registry through the `cityos.lake_tables`
entry point (so `read_table` reads them and the datashare catalog can register them)."""

from __future__ import annotations

from cityos_analytics.jobs import JOBS
from cityos_platform.lake import TableSpec

TABLES: list[TableSpec] = [spec for job in JOBS.values() for spec in job.outputs]
