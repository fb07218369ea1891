"""Following the streams into the spool: one follower per service's `StreamEvents` and one on the
devices telemetry feed (`SubscribeTelemetry`), each as the exporter's own client (`cityos-exporter`,
client credentials: `cityos_platform.peers`).

Each response becomes rows of the lake tables (`cityos_exporter.rows`) and is committed to the spool
with the stream's new cursor in one transaction (`Spool.commit`), so after a crash or a restart the
follower resumes after the last batch whose rows are spooled: nothing twice, nothing lost. The cursor is
the spool's (the sources keep their history for the exporter, within their retention: the devices
telemetry buffer is pruned after CITYOS_DEVICES_SPOOL_RETENTION_H).

Backpressure: while the spool holds `max_spool_rows` rows (the lake is away) a follower reads no
further; the stream waits on gRPC flow control and nothing is dropped. When a source, the issuer or
the spool fails the follower reconnects with backoff (doubling from `retry_s` up to 60 s; back to the
start after progress). A source that serves no event stream (UNIMPLEMENTED) is retried at the longest
delay, with a warning.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import pyarrow as pa

from cityos.common.v1 import events_pb2, events_pb2_grpc
from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_exporter import rows
from cityos_exporter.spool import CursorMoved, Spool
from cityos_platform.peers import TokenError, TokenRefused

log = logging.getLogger(__name__)

MAX_RETRY_S = 60.0
TELEMETRY = "devices.telemetry"  # the telemetry feed's name in the spool (cursor, chunk source)
BACKPRESSURE_POLL_S = 0.5


class Follower(abc.ABC):
    """Follows one stream into the spool (`run()` until cancelled; `start()`/`stop()` around it).
    `rows` counts the rows spooled and `batches` the batches committed since it was made."""

    def __init__(
        self,
        source: str,
        channel: grpc.aio.Channel,
        spool: Spool,
        *,
        max_batch: int,
        retry_s: float,
        max_spool_rows: int,
        on_spooled: Callable[[], None] = lambda: None,
    ) -> None:
        self.source = source
        self.channel = channel
        self.spool = spool
        self.max_batch = max_batch
        self.retry_s = retry_s
        self.max_spool_rows = max_spool_rows
        self.on_spooled = on_spooled
        self.rows = 0
        self.batches = 0
        self.waiting_for_room = False
        self._task: asyncio.Task[None] | None = None
        # Held while a batch is committed to the spool (in a thread): `stop()` waits for it rather than
        # abandoning a commit that would then finish after the event loop closed.
        self._committing = asyncio.Lock()

    @abc.abstractmethod
    def _responses(self, cursor: str) -> Any:
        """The stream call after `cursor` (a grpc.aio UnaryStreamCall)."""

    @abc.abstractmethod
    def _chunks(self, response: Any) -> Mapping[str, pa.Table]:
        """A response's rows, lake table -> rows."""

    async def _room(self) -> None:
        """Wait while the spool is full."""
        while self.spool.rows >= self.max_spool_rows:
            if not self.waiting_for_room:
                log.warning(
                    "the spool holds %d rows (CITYOS_EXPORTER_MAX_SPOOL_ROWS=%d): not reading %s until "
                    "the lake takes them",
                    self.spool.rows,
                    self.max_spool_rows,
                    self.source,
                )
                self.waiting_for_room = True
            await asyncio.sleep(BACKPRESSURE_POLL_S)
        if self.waiting_for_room:
            log.info("the spool has room again: reading %s", self.source)
            self.waiting_for_room = False

    def _commit(self, expected: str, cursor: str, response: Any) -> int:
        return self.spool.commit(self.source, expected, cursor, self._chunks(response))

    async def _follow(self) -> None:
        cursor = await asyncio.to_thread(self.spool.cursor, self.source)
        call = self._responses(cursor)
        try:
            async for response in call:
                if not response.cursor or response.cursor == cursor:
                    continue
                await self._room()
                async with self._committing:
                    added = await asyncio.to_thread(self._commit, cursor, response.cursor, response)
                cursor = response.cursor
                self.rows += added
                self.batches += 1
                if added:
                    self.on_spooled()
        finally:
            call.cancel()

    async def run(self) -> None:
        delay = self.retry_s
        while True:
            batches = self.batches
            try:
                await self._follow()
                log.warning("the stream of %s ended; resubscribing", self.source)
            except CursorMoved:
                log.warning("the cursor of %s moved under this exporter; resubscribing from it", self.source)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    delay = MAX_RETRY_S
                    log.warning(
                        "%s serves no such stream (%s); trying again in %.0f s",
                        self.source,
                        error.details(),
                        delay,
                    )
                else:
                    log.warning(
                        "the stream of %s is unavailable (%s: %s); retrying in %.1f s",
                        self.source,
                        error.code().name,
                        error.details(),
                        delay,
                    )
            except TokenRefused as error:
                log.error("no token to read %s: %s; retrying in %.1f s", self.source, error, delay)
            except TokenError as error:
                log.warning("no token to read %s: %s; retrying in %.1f s", self.source, error, delay)
            except sqlite3.Error as error:
                log.error(
                    "the spool failed while reading %s (%s); retrying in %.1f s", self.source, error, delay
                )
            except Exception:  # a bug must not stop the follower for good: say so loudly and try again
                log.exception("following %s failed; retrying in %.1f s", self.source, delay)
            if self.batches > batches:
                delay = self.retry_s  # it made progress: start the backoff again
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"exporter: {self.source}")

    async def stop(self) -> None:
        if self._task is not None:
            async with self._committing:  # a batch being committed finishes first
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.channel.close()


class EventsFollower(Follower):
    """A service's `cityos.common.v1.EventService/StreamEvents`, every event type, city-wide (the
    exporter's token carries the role `service`)."""

    def __init__(self, source: str, channel: grpc.aio.Channel, spool: Spool, **options: Any) -> None:
        super().__init__(source, channel, spool, **options)
        self.stub = events_pb2_grpc.EventServiceStub(channel)
        self.skipped = rows.Skipped()  # events of types the lake keeps no table for, by type

    def _responses(self, cursor: str) -> Any:
        return self.stub.StreamEvents(
            events_pb2.StreamEventsRequest(after_cursor=cursor, follow=True, max_batch=self.max_batch)
        )

    def _chunks(self, response: events_pb2.StreamEventsResponse) -> Mapping[str, pa.Table]:
        known = set(self.skipped.by_type)
        chunks = rows.event_chunks(self.source, response.events, self.skipped)
        for event_type in sorted(set(self.skipped.by_type) - known):
            log.info("events of type %s (from %s) have no lake table: not exported", event_type, self.source)
        return chunks


class TelemetryFollower(Follower):
    """The devices service's `TelemetryService/SubscribeTelemetry`, every device type."""

    def __init__(self, channel: grpc.aio.Channel, spool: Spool, **options: Any) -> None:
        super().__init__(TELEMETRY, channel, spool, **options)
        self.stub = devices_pb2_grpc.TelemetryServiceStub(channel)

    def _responses(self, cursor: str) -> Any:
        return self.stub.SubscribeTelemetry(
            devices_pb2.SubscribeTelemetryRequest(after_cursor=cursor, follow=True, max_batch=self.max_batch)
        )

    def _chunks(self, response: devices_pb2.SubscribeTelemetryResponse) -> Mapping[str, pa.Table]:
        return rows.telemetry_chunks(response.records)
