"""The exporter process: gRPC health only; in worker 0, once it holds the leader lock, the followers and
the flusher.

Which streams: `StreamEvents` of every service `CITYOS_ENDPOINTS` names except the exporter itself (or
those `CITYOS_EXPORTER_SOURCES` lists), and the devices telemetry feed when `devices` is among them and
`CITYOS_EXPORTER_FOLLOW_TELEMETRY` is on. The exporter calls them as its own client `cityos-exporter`
(`CITYOS_AUTH_CLIENT_SECRET`); without a secret it follows nothing and says so. The spool is
`<var_dir>/exporter/spool.sqlite`, the lock `<var_dir>/exporter/leader.lock`, the lake
`CITYOS_LAKE_URL` (default `<var_dir>/lake`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence

from cityos_exporter.flusher import Flusher, watch
from cityos_exporter.followers import EventsFollower, Follower, TelemetryFollower
from cityos_exporter.leader import LeaderLock
from cityos_exporter.settings import ExporterSettings
from cityos_exporter.spool import Spool
from cityos_platform.config import Settings
from cityos_platform.lake.location import Lake, LakeSettings
from cityos_platform.peers import client_credentials, peer_channel
from cityos_platform.server import Mount

log = logging.getLogger(__name__)

NAME = "exporter"
DEVICES = "devices"  # the service whose telemetry feed is followed


class ExporterApp:
    def __init__(
        self,
        settings: Settings,
        *,
        exporter_settings: ExporterSettings | None = None,
        lake_settings: LakeSettings | None = None,
    ) -> None:
        self.settings = settings
        self.exporter_settings = exporter_settings or ExporterSettings()
        self.lake_settings = lake_settings or LakeSettings()
        self.directory = settings.var_dir / "exporter"
        self.lock = LeaderLock(self.directory / "leader.lock")
        self.lake: Lake | None = None
        self.spool: Spool | None = None
        self.flusher: Flusher | None = None
        self.followers: list[Follower] = []
        self.leading = asyncio.Event()  # set once this process holds the lock and runs
        self._task: asyncio.Task[None] | None = None

    def sources(self) -> list[str]:
        """The services whose events are exported."""
        named = self.exporter_settings.sources or sorted(self.settings.endpoints)
        return [name for name in named if name != NAME]

    def _pause(self, point: str) -> None:
        """The fault tests' stop (runs in a worker thread)."""
        chosen = self.exporter_settings
        if chosen.debug_pause_at == point and chosen.debug_pause_s > 0:
            log.warning("debug pause at %s for %.1f s", point, chosen.debug_pause_s)
            time.sleep(chosen.debug_pause_s)

    async def start(self) -> Sequence[Mount]:
        """Nothing to mount (the server adds health and reflection); the work starts in the background.
        A lake location that is not valid (CITYOS_LAKE_URL) stops the start here, with its message."""
        lake = self.lake = Lake.from_settings(self.lake_settings, self.settings.var_dir)
        if self.settings.runs_singletons:  # one exporter per replica, in its worker 0
            self._task = asyncio.get_running_loop().create_task(self._lead(lake), name="exporter: leader")
        return []

    async def _lead(self, lake: Lake) -> None:
        chosen = self.exporter_settings
        waiting = False
        while not self.lock.try_acquire():
            if not waiting:
                log.info(
                    "standing by: another exporter (pid %s) holds %s; trying every %.0f s",
                    self.lock.holder() or "?",
                    self.lock.path,
                    chosen.lock_retry_s,
                )
                waiting = True
            await asyncio.sleep(chosen.lock_retry_s)
        log.info("this process is the active exporter (%s)", self.lock.path)
        while True:
            try:
                spool = await asyncio.to_thread(Spool, self.directory / "spool.sqlite", pause=self._pause)
                break
            except (OSError, sqlite3.Error) as error:  # a full or read-only disk: say so, keep trying
                log.error("cannot open the spool (%s); trying again in %.0f s", error, chosen.lock_retry_s)
                await asyncio.sleep(chosen.lock_retry_s)
        self.spool = spool
        flusher = self.flusher = Flusher(
            spool,
            lake,
            interval_s=chosen.flush_interval_s,
            flush_rows=chosen.flush_rows,
            retry_s=chosen.retry_s,
            max_backoff_s=chosen.max_flush_backoff_s,
            pause=self._pause,
            compact_interval_s=chosen.compact_interval_s,
            compact_days=chosen.compact_days,
            compact_target_bytes=chosen.compact_target_mb * 1024 * 1024,
        )
        watch(spool)
        self.followers = self._followers(spool, flusher)
        flusher.start()
        for follower in self.followers:
            follower.start()
        log.info(
            "exporting %s into %s; %d rows wait in the spool",
            ", ".join(follower.source for follower in self.followers) or "nothing",
            lake.root,
            spool.rows,
        )
        self.leading.set()

    def _followers(self, spool: Spool, flusher: Flusher) -> list[Follower]:
        chosen = self.exporter_settings
        tokens = client_credentials(self.settings, NAME)
        if tokens is None:
            log.warning(
                "CITYOS_AUTH_CLIENT_SECRET is not set: the exporter follows no stream (it only writes "
                "what its spool still holds)"
            )
            return []
        options = {
            "max_batch": chosen.max_batch,
            "retry_s": chosen.retry_s,
            "max_spool_rows": chosen.max_spool_rows,
            "on_spooled": flusher.spooled,
        }
        followers: list[Follower] = []
        for source in self.sources():
            if source not in self.settings.endpoints:
                log.warning("CITYOS_ENDPOINTS has no address for %s: its events are not exported", source)
                continue
            followers.append(
                EventsFollower(source, peer_channel(self.settings, source, tokens), spool, **options)
            )
        if chosen.follow_telemetry and DEVICES in self.settings.endpoints:
            followers.append(
                TelemetryFollower(peer_channel(self.settings, DEVICES, tokens), spool, **options)
            )
        return followers

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for follower in self.followers:
            await follower.stop()
        if self.flusher is not None:
            await self.flusher.stop(final_flush_s=self.settings.grace_s)
        if self.spool is not None:
            watch(None)
            if self.flusher is None or not self.flusher.busy:
                self.spool.close()
        self.lock.release()


def create(settings: Settings) -> ExporterApp:
    return ExporterApp(settings)
