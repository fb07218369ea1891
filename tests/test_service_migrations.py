"""Every installed service's migrations build exactly the tables its models declare, on SQLite and on
PostgreSQL: a column added to a model without a migration (or a migration that drifts from the model)
fails here, before a deployment finds it."""

from __future__ import annotations

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cityos_platform.db import Database
from cityos_platform.migrate import PLATFORM_CHAIN, upgrade
from cityos_platform.registry import discover

SERVICES = sorted(discover())


def _chain(service: str):  # type: ignore[no-untyped-def]
    """The service's migration chain; None for a process without a database (the lake exporter)."""
    module = importlib.import_module(discover()[service].factory.partition(":")[0])
    return getattr(module, "CHAIN", None)


@pytest.mark.parametrize("service", SERVICES)
async def test_models_and_migrations_agree(service, database_url):
    chain = _chain(service)
    if chain is None:
        pytest.skip(f"{service} has no database of its own")
    await upgrade(database_url, [PLATFORM_CHAIN, chain])
    db = Database(database_url, source="test")

    def diff(connection, metadata):  # type: ignore[no-untyped-def]
        def own(obj, name, kind, reflected, compare_to):  # type: ignore[no-untyped-def]
            table = name if kind == "table" else getattr(getattr(obj, "table", None), "name", None)
            return table in metadata.tables  # the platform's tables are another chain's

        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": own})
        return compare_metadata(context, metadata)

    try:
        async with db.engine.connect() as connection:
            assert await connection.run_sync(diff, chain.metadata) == []
    finally:
        await db.close()
