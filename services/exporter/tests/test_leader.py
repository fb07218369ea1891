"""One active exporter: a second exporter process on the same var dir stands by (no spool, no
followers) while the first holds the leader lock, and takes over once the first is gone — however it
ended, since the kernel drops a `flock` with its holder."""

from __future__ import annotations

import asyncio

from cityos_exporter.app import ExporterApp
from cityos_exporter.settings import ExporterSettings
from cityos_platform.config import load_settings


async def test_a_second_exporter_stands_by_until_the_first_is_gone(tmp_path):
    settings = load_settings(var_dir=tmp_path)
    quick = ExporterSettings(lock_retry_s=0.05, flush_interval_s=0.1)
    first, second = (
        ExporterApp(settings, exporter_settings=quick),
        ExporterApp(settings, exporter_settings=quick),
    )
    assert await first.start() == []  # nothing mounted: the server adds health and reflection
    await asyncio.wait_for(first.leading.wait(), 5)
    await second.start()
    await asyncio.sleep(0.5)
    assert not second.leading.is_set()
    assert second.spool is None
    assert second.lock.holder() == first.lock.holder()
    await first.stop()
    await asyncio.wait_for(second.leading.wait(), 5)
    assert second.spool is not None
    await second.stop()


async def test_only_worker_zero_exports(tmp_path):
    worker = ExporterApp(load_settings(var_dir=tmp_path, worker_index=1))
    await worker.start()
    await asyncio.sleep(0.2)
    assert not worker.leading.is_set()
    assert not (tmp_path / "exporter" / "leader.lock").exists()
    await worker.stop()
