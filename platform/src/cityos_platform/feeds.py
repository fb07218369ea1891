"""Following the devices telemetry feed into a service's own state, once per batch and exactly once.

A service that derives state from device readings (parking spots from their sensors, manhole covers
from their terminals) subscribes to `cityos.devices.v1.TelemetryService/SubscribeTelemetry` (its device
types, `follow`, after its checkpoint) as its own client (`peers.client_credentials`, `peers.peer_channel`)
and hands each batch of records to its `apply(tx, records)` callback. The callback's effects and the
batch's cursor are committed in one transaction: after a crash or a restart the follower resumes after
the last batch whose effects committed, so nothing is applied twice and nothing is lost.

The cursor lives in the service's feed-cursor table (a model with the columns `feed` (primary key),
`cursor` and `update_time`; the row `"devices.telemetry"`) and is moved compare-and-set: a replica that
finds it moved by another replica rolls back and resubscribes from there, so with several replicas each
batch is still applied once. When the feed, the issuer or the database is away the follower reconnects
with backoff (doubling from the service's retry delay up to 30 s; back to the start after progress).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from sqlalchemy.exc import IntegrityError, OperationalError

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database, Tx
from cityos_platform.peers import TokenError, TokenRefused, client_credentials, peer_channel

log = logging.getLogger(__name__)

FEED = "devices.telemetry"
DEVICES = "devices"
FEED_BATCH = 500
MAX_RETRY_S = 30.0

#: Applies a batch of feed records inside the transaction that moves the cursor; returns how many of
#: them concerned the service (counted in `TelemetryFollower.records`).
Apply = Callable[[Tx, Sequence[devices_pb2.TelemetryRecord]], Awaitable[int]]


class FeedCursor(Protocol):
    """A row of a service's feed-cursor table."""

    feed: Any
    cursor: Any
    update_time: Any


class CursorMoved(Exception):
    """Another replica moved the feed cursor since this follower read it."""


async def load_cursor(db: Database, cursor_model: type[Any], feed: str = FEED) -> str:
    """The stored cursor of `feed` ("" before the first batch)."""
    async with db.read() as session:
        row = await session.get(cursor_model, feed)
    return row.cursor if row is not None else ""


async def move_cursor(tx: Tx, cursor_model: type[Any], expected: str, cursor: str, feed: str = FEED) -> None:
    """Compare-and-set: move the cursor of `feed` from `expected` to `cursor`, or CursorMoved."""
    row: FeedCursor | None = await tx.session.get(cursor_model, feed, with_for_update=True)
    if (row.cursor if row is not None else "") != expected:
        raise CursorMoved
    if row is None:
        tx.session.add(cursor_model(feed=feed, cursor=cursor, update_time=tx.now))
    else:
        row.cursor, row.update_time = cursor, tx.now


def when(stamp: Any) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def device_ids(records: Sequence[devices_pb2.TelemetryRecord], types: Sequence[str]) -> set[str]:
    """The device ids (without `devices/`) of the records of the given device types."""
    found = set()
    for record in records:
        prefix, _, device_id = record.device.partition("/")
        if record.type in types and prefix == "devices" and device_id:
            found.add(device_id)
    return found


class TelemetryFollower:
    """Follows the telemetry feed of some device types into a service's state (`run()` until
    cancelled, `start()`/`stop()` around it; `catch_up()` applies what is on the feed once).

    `channel` reaches the devices service and carries the service's token (`peers.peer_channel`); the
    follower closes it when stopped. `records` counts what `apply` reported, `batches` the batches
    committed, since this follower was made."""

    def __init__(
        self,
        db: Database,
        channel: grpc.aio.Channel,
        *,
        types: Sequence[str],
        cursor_model: type[Any],
        apply: Apply,
        retry_s: float,
        max_batch: int = FEED_BATCH,
        feed: str = FEED,
        name: str = "telemetry follower",
    ) -> None:
        self.db = db
        self.channel = channel
        self.stub = devices_pb2_grpc.TelemetryServiceStub(channel)
        self.types = list(types)
        self.cursor_model = cursor_model
        self.apply = apply
        self.retry_s = retry_s
        self.max_batch = max_batch
        self.feed = feed
        self.name = name
        self.records = 0
        self.batches = 0
        self._task: asyncio.Task[None] | None = None
        # Held while a batch is applied: `stop()` waits for it, so no batch is cancelled halfway (a
        # cancelled database call could go on in a driver thread after the database is closed).
        self._applying = asyncio.Lock()

    async def _follow(self, follow: bool) -> int:
        cursor = await load_cursor(self.db, self.cursor_model, self.feed)
        request = devices_pb2.SubscribeTelemetryRequest(
            after_cursor=cursor, types=self.types, follow=follow, max_batch=self.max_batch
        )
        call = self.stub.SubscribeTelemetry(request)
        applied = 0
        try:
            async for response in call:
                if not response.cursor or response.cursor == cursor:
                    continue
                async with self._applying, self.db.transaction() as tx:
                    await move_cursor(tx, self.cursor_model, cursor, response.cursor, self.feed)
                    count = await self.apply(tx, response.records)
                cursor = response.cursor
                applied += count
                self.records += count
                self.batches += 1
        finally:
            call.cancel()
        return applied

    async def catch_up(self) -> int:
        """Apply everything on the feed so far; the number of records `apply` counted."""
        return await self._follow(follow=False)

    async def run(self) -> None:
        """Follow the feed until cancelled, reconnecting with backoff (doubling from `retry_s` up to
        30 s) when the devices service, the issuer or the database is away."""
        delay = self.retry_s
        while True:
            batches = self.batches
            try:
                await self._follow(follow=True)
                log.warning("the telemetry feed ended; resubscribing")
            except CursorMoved:
                log.info("another replica moved the telemetry cursor; resubscribing from it")
                continue
            except IntegrityError:  # another replica stored the first cursor at the same time
                log.info("another replica stored the telemetry cursor first; resubscribing from it")
                continue
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "telemetry feed unavailable (%s: %s); retrying in %.1f s",
                    error.code().name,
                    error.details(),
                    delay,
                )
            except TokenRefused as error:
                log.error("no token for the telemetry feed: %s; retrying in %.1f s", error, delay)
            except TokenError as error:
                log.warning("no token for the telemetry feed: %s; retrying in %.1f s", error, delay)
            except OperationalError as error:
                log.warning("database unavailable while applying telemetry (%s); retrying", error.orig)
            except Exception:  # a bug must not stop the follower for good: say so loudly and try again
                log.exception("applying the telemetry feed failed; retrying in %.1f s", delay)
            if self.batches > batches:
                delay = self.retry_s  # it made progress: start the backoff again
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        """Stop following: a batch being applied commits first; the wait for the next one is cut short."""
        if self._task is not None:
            async with self._applying:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.channel.close()


def feed_channel(
    settings: Settings,
    service: str,
    types: Sequence[str],
    *,
    without: str,
    clock: Clock = SYSTEM_CLOCK,
) -> grpc.aio.Channel | None:
    """A channel to the devices service carrying `service`'s token, when this deployment has one:
    `CITYOS_ENDPOINTS` names `devices` and the service has its client secret
    (`CITYOS_AUTH_CLIENT_SECRET`). Otherwise None, and the log says what is missing and, in `without`,
    what the service does without the feed."""
    missing = [
        variable
        for variable, present in (
            ("CITYOS_ENDPOINTS with 'devices'", DEVICES in settings.endpoints),
            ("CITYOS_AUTH_CLIENT_SECRET", bool(settings.auth_client_secret.get_secret_value())),
        )
        if not present
    ]
    if missing:
        log.warning(
            "not following the devices telemetry feed: %s not set; %s", " and ".join(missing), without
        )
        return None
    tokens = client_credentials(settings, service, clock=clock)
    channel = peer_channel(settings, DEVICES, tokens)
    log.info(
        "following the devices telemetry feed at %s (devices of type %s) as %s",
        settings.endpoints[DEVICES],
        ", ".join(types),
        settings.client_id_for(service),
    )
    return channel


def telemetry_follower(
    db: Database,
    settings: Settings,
    service: str,
    *,
    types: Sequence[str],
    cursor_model: type[Any],
    apply: Apply,
    retry_s: float,
    without: str,
    clock: Clock = SYSTEM_CLOCK,
) -> TelemetryFollower | None:
    """The follower of the devices feed for `service` (see `feed_channel` for when there is none).
    Whether following is switched on at all is the service's own setting: check it before."""
    channel = feed_channel(settings, service, types, without=without, clock=clock)
    if channel is None:
        return None
    return TelemetryFollower(
        db,
        channel,
        types=types,
        cursor_model=cursor_model,
        apply=apply,
        retry_s=retry_s,
        name=f"{service} telemetry follower",
    )
