"""The test harness itself: the throwaway PostgreSQL database, and skip-or-fail when it is missing."""

from __future__ import annotations

import asyncpg
import pytest

from cityos_platform.testing.fixtures import unreachable


@pytest.mark.postgres
async def test_postgres_fixture_gives_a_fresh_database_of_its_own(postgres_dsn):
    connection = await asyncpg.connect(postgres_dsn, timeout=5)
    try:
        name = await connection.fetchval("SELECT current_database()")
        tables = await connection.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await connection.close()
    assert name.startswith("cityos_test_")
    assert tables == 0


def test_a_missing_service_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no server"):
        unreachable("no server")


def test_a_missing_service_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        unreachable("no server")
