"""Writing the spool to the lake: every `flush_interval_s`, or as soon as `flush_rows` rows are spooled.

A flush takes the spool's parts (`Spool.parts`: first those a crash left half done, unchanged; then new
ones, per table and source, consecutive chunks in spool order, at most `flush_rows` rows each), writes
each with `cityos_platform.lake.files.write_rows` under its deterministic part id, and only then removes
its rows from the spool (`Spool.complete`). Killed between the write and the removal, the exporter
writes the same part again on restart: the same files with the same rows, so the lake holds every row
exactly once.

Compaction: after a successful flush, once every `compact_interval_s`, the partitions of the last
`compact_days` closed UTC days of every table are compacted (`cityos_platform.lake.files.compact`: small
parts merged into files of about `compact_target_mb`, readers switched over by the partition's manifest).
It runs in the flusher's own sequence, never beside a part being written, and only once no part is half
done; a part rewritten after its day was compacted keeps a retired name that readers ignore.

When the lake is unreachable (S3 down, a full disk) the flush fails, is logged with the spool's size
and lag, and is tried again with backoff (doubling from `retry_s` up to `max_flush_backoff_s`); the
followers keep spooling meanwhile, up to `max_spool_rows`. The lag — how long the oldest spooled row
has waited — and the spool's size are OpenTelemetry gauges (`cityos.exporter.lag`,
`cityos.exporter.spool.rows`) and part of every flush's log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from opentelemetry import metrics

from cityos_exporter.spool import Spool
from cityos_platform.lake import files, tables
from cityos_platform.lake.location import Lake

log = logging.getLogger(__name__)

ROUNDS = 2  # a flush writes what a crash left over, then what is spooled now; later rows wait for the next


class Flusher:
    """Flushes `spool` into `lake` (`run()` until cancelled, `start()`/`stop()` around it;
    `flush_once()` is one synchronous flush). `pause(point)` is called with `"lake_written"` after a
    part's files are written and before its rows leave the spool (the fault tests stop there)."""

    def __init__(
        self,
        spool: Spool,
        lake: Lake,
        *,
        interval_s: float,
        flush_rows: int,
        retry_s: float,
        max_backoff_s: float,
        pause: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        compact_interval_s: float = 3600.0,
        compact_days: int = 0,
        compact_target_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.spool = spool
        self.lake = lake
        self.interval_s = interval_s
        self.flush_rows = flush_rows
        self.retry_s = retry_s
        self.max_backoff_s = max_backoff_s
        self.pause = pause
        self.clock = clock
        self.parts_written = 0
        self.rows_written = 0
        self.failures = 0
        self.reachable = True  # whether the last flush succeeded
        self.compact_interval_s = compact_interval_s
        self.compact_days = compact_days
        self.compact_target_bytes = compact_target_bytes
        self.files_compacted = 0
        self._next_compaction = clock() + min(compact_interval_s, 60.0)  # soon after a start, not at once
        self._bucket_ready = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flushing: asyncio.Future[int] | None = None

    def spooled(self) -> None:
        """A follower spooled rows: flush now if `flush_rows` are waiting."""
        if self.spool.rows >= self.flush_rows:
            self._wake.set()

    def flush_once(self) -> int:
        """Write what is spooled to the lake; the number of rows written. Raises what the lake raised
        (the parts not yet completed are written again, unchanged, by the next flush)."""
        if not self._bucket_ready:
            self.lake.ensure_bucket()
            self._bucket_ready = True
        written = 0
        for _ in range(ROUNDS):
            parts = self.spool.parts(self.flush_rows)
            if not parts:
                break
            for part in parts:
                spec = tables.table(part.table)
                files.write_rows(self.lake, spec, self.spool.read(part), part.part_id)
                if self.pause is not None:
                    self.pause("lake_written")
                self.spool.complete(part)
                written += part.rows
                self.parts_written += 1
                self.rows_written += part.rows
        return written

    def compact_once(self, now: datetime | None = None) -> int:
        """Compact the partitions of the last `compact_days` closed UTC days of every table; the number
        of compacted files written."""
        today = (now or datetime.fromtimestamp(self.clock(), UTC)).date()
        written = 0
        for spec in tables.REGISTRY.values():
            for back in range(1, self.compact_days + 1):
                day = today - timedelta(days=back)
                written += len(files.compact(self.lake, spec, day, target_bytes=self.compact_target_bytes))
        self.files_compacted += written
        return written

    async def _in_thread(self, work: Callable[[], int]) -> int:
        """`work` in a thread, which `stop()` lets finish rather than abandon mid-part."""
        self._flushing = asyncio.ensure_future(asyncio.to_thread(work))
        return await asyncio.shield(self._flushing)

    async def _flush(self) -> int:
        return await self._in_thread(self.flush_once)

    async def _compact_when_due(self) -> None:
        if self.compact_days <= 0 or self.clock() < self._next_compaction:
            return
        self._next_compaction = self.clock() + self.compact_interval_s
        started = self.clock()
        try:
            written = await self._in_thread(self.compact_once)
        except Exception as error:  # tried again at the next interval; the small files stay readable
            log.warning(
                "compacting the lake failed (%s: %s); trying again later", type(error).__name__, error
            )
            return
        if written:
            log.info("compacted the lake: %d merged files in %.1f s", written, self.clock() - started)

    async def run(self) -> None:
        delay = self.retry_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
            self._wake.clear()
            started = self.clock()
            try:
                written = await self._flush()
            except Exception as error:
                self.failures += 1
                self.reachable = False
                stats = await asyncio.to_thread(self.spool.stats)
                log.warning(
                    "the lake is unreachable (%s: %s); %d rows wait in the spool, the oldest for %.0f s; "
                    "retrying in %.1f s",
                    type(error).__name__,
                    error,
                    stats.rows,
                    stats.lag_s(self.clock()),
                    delay,
                    extra={"fields": {"spool_rows": stats.rows, "lag_s": stats.lag_s(self.clock())}},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                self._wake.set()  # try again at once after the backoff
                continue
            if not self.reachable:
                log.info("the lake is reachable again")
            self.reachable = True
            delay = self.retry_s
            if written:
                stats = await asyncio.to_thread(self.spool.stats)
                log.info(
                    "flushed %d rows to the lake in %.2f s; %d rows wait in the spool, the oldest for %.0f s",
                    written,
                    self.clock() - started,
                    stats.rows,
                    stats.lag_s(self.clock()),
                    extra={"fields": {"rows": written, "spool_rows": stats.rows}},
                )
            await self._compact_when_due()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="exporter: flusher")

    async def stop(self, *, final_flush_s: float = 0.0) -> None:
        """Stop flushing (a flush under way finishes first); then, when the lake was reachable, one
        last flush of at most `final_flush_s` so that a graceful stop leaves the spool empty."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._flushing is not None:
            await asyncio.wait([self._flushing], timeout=max(final_flush_s, 1.0))
            if self._flushing.done() and not self._flushing.cancelled() and self._flushing.exception():
                self.reachable = False  # the flush under way failed: its parts stay for the next start
        if final_flush_s > 0 and self.reachable and self.spool.rows:
            try:
                await asyncio.wait_for(self._flush(), timeout=final_flush_s)
            except Exception as error:  # the rows stay spooled for the next start
                log.warning("the last flush did not finish (%s); the spool keeps its rows", error)

    @property
    def busy(self) -> bool:
        return self._flushing is not None and not self._flushing.done()


def _nothing() -> Spool | None:
    return None


_watched: Callable[[], Spool | None] = _nothing
_gauges_registered = False


def watch(spool: Spool | None, clock: Callable[[], float] = time.time) -> None:
    """Report this spool's size and lag as OpenTelemetry gauges (None: report nothing). The gauges are
    registered once per process and hold the spool weakly, so a stopped exporter is not kept alive."""
    global _watched, _gauges_registered
    _watched = weakref.ref(spool) if spool is not None else _nothing
    if _gauges_registered:
        return
    meter = metrics.get_meter("cityos_exporter")

    def rows(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        watched = _watched()
        return [metrics.Observation(watched.rows)] if watched is not None else []

    def lag(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        watched = _watched()
        try:
            return [metrics.Observation(watched.stats().lag_s(clock()))] if watched is not None else []
        except sqlite3.Error:  # closed meanwhile
            return []

    meter.create_observable_gauge(
        "cityos.exporter.spool.rows", [rows], unit="{row}", description="rows spooled, not yet in the lake"
    )
    meter.create_observable_gauge(
        "cityos.exporter.lag", [lag], unit="s", description="how long the oldest spooled row has waited"
    )
    _gauges_registered = True
