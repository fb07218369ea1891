"""Fixtures of the datashare tests: a running datashare (SQLite and PostgreSQL) over a local lake that
holds parking rows in two districts (cityos_datashare.testing).

`share`: the service on a ManualClock that starts at the real time (tokens are checked on the real
clock by the server; agreements expire on the manual one). Its expiry sweep does not run by itself:
tests call `expire_due`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cityos_datashare.testing import Share, fill, running_share
from cityos_platform.clock import ManualClock
from cityos_platform.lake import Lake


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def lake(tmp_path) -> Lake:  # type: ignore[no-untyped-def]
    lake = Lake.local(tmp_path / "lake")
    fill(lake)
    return lake


@pytest.fixture
async def share(start_server, dev_issuer, mint, tmp_path, clock, database_url, lake):  # type: ignore[no-untyped-def]
    app, server, channel = await running_share(
        start_server, dev_issuer, mint, tmp_path, clock, database_url, lake
    )
    yield Share(app, channel, mint, clock)
    await channel.close()
    await server.stop(grace=0)
    await app.stop()
