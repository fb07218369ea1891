"""Settings of the lake exporter beyond the platform's (`CITYOS_EXPORTER_*`; the lake itself is
`CITYOS_LAKE_*`, `cityos_platform.lake.location.LakeSettings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where a fault test may make the exporter stop for `debug_pause_s` (see `debug_pause_at`).
PausePoint = Literal["", "spool_commit", "lake_written"]


class ExporterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOS_EXPORTER_", extra="ignore", frozen=True)

    # -- what is followed ----------------------------------------------------------------------------
    # The services whose StreamEvents are exported (a JSON list). Empty: every service CITYOS_ENDPOINTS
    # names except the exporter itself.
    sources: list[str] = Field(default_factory=list)
    # Follow the devices telemetry feed (device_telemetry and the per-type reading tables).
    follow_telemetry: bool = True
    # Records asked for per response of a stream (the servers cap it at 1,000).
    max_batch: int = Field(default=1000, ge=1, le=1000)
    # Wait this long before reconnecting to a stream that failed (doubling up to 60 s).
    retry_s: float = Field(default=1.0, gt=0, le=60)

    # -- the spool and the lake --------------------------------------------------------------------
    # Write what is spooled to the lake this often, or as soon as `flush_rows` rows are spooled; also
    # the most rows one Parquet part holds.
    flush_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    flush_rows: int = Field(default=50_000, ge=1, le=10_000_000)
    # Stop reading the streams while the spool holds this many rows (the lake is away): backpressure,
    # never a dropped row. The sources keep their history until the exporter reads it.
    max_spool_rows: int = Field(default=5_000_000, ge=1)
    # The backoff of a failed flush (the lake unreachable) doubles from `retry_s` up to this.
    max_flush_backoff_s: float = Field(default=60.0, gt=0, le=3600)
    # Compaction (`cityos_platform.lake.files.compact`): this often, the day partitions of the last
    # `compact_days` closed UTC days (not today's, still being written) have their small parts merged
    # into files of about `compact_target_mb`. 0 days: never.
    compact_interval_s: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    compact_days: int = Field(default=3, ge=0, le=366)
    compact_target_mb: int = Field(default=64, ge=1, le=4096)

    # -- one active exporter -----------------------------------------------------------------------
    # A standby (the leader lock held by another process) tries to take it this often.
    lock_retry_s: float = Field(default=5.0, gt=0, le=300)

    # -- fault injection, for the exactly-once tests only --------------------------------------------
    # Stop for `debug_pause_s` at this point, after logging "debug pause at <point>": `spool_commit`
    # inside a batch's spool transaction (rows written, cursor moved, not yet committed);
    # `lake_written` after a part's files are in the lake and before its rows leave the spool.
    debug_pause_at: PausePoint = ""
    debug_pause_s: float = Field(default=0.0, ge=0, le=600)
