"""Schema migrations with Alembic, per service, on SQLite and PostgreSQL alike.

Every service database carries two migration chains, each with its own version table:
the platform's (outbox, idempotency keys, consumer checkpoints; table `cityos_platform_version`) and the
service's own (`alembic_version`). `upgrade()` applies both, platform first. A chain is a folder with
Alembic's `env.py` (two lines: import and call `run_env()`), `script.py.mako` and `versions/`.
SQLite runs migrations in batch mode, so ALTERs that SQLite lacks are done by table copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from cityos_platform.db import create_engine, normalize_url
from cityos_platform.models import PlatformBase


@dataclass(frozen=True)
class MigrationChain:
    name: str
    script_location: Path
    version_table: str
    metadata: MetaData | None = None

    def config(self, connection: Connection | None = None) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.script_location))
        config.attributes["version_table"] = self.version_table
        config.attributes["metadata"] = self.metadata
        if connection is not None:
            config.attributes["connection"] = connection
        return config


PLATFORM_CHAIN = MigrationChain(
    name="platform",
    script_location=Path(str(files("cityos_platform") / "migrations")),
    version_table="cityos_platform_version",
    metadata=PlatformBase.metadata,
)


def service_chain(package: str, metadata: MetaData | None = None) -> MigrationChain:
    """The chain of a service package, in `<package>/migrations`, version table `alembic_version`."""
    return MigrationChain(
        name=package,
        script_location=Path(str(files(package) / "migrations")),
        version_table="alembic_version",
        metadata=metadata,
    )


def _upgrade(connection: Connection, chain: MigrationChain, revision: str) -> None:
    command.upgrade(chain.config(connection), revision)


def _current(connection: Connection, chain: MigrationChain) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": chain.version_table})
    return context.get_current_revision()


async def upgrade(url: str, chains: list[MigrationChain], targets: Mapping[str, str] | None = None) -> None:
    """Upgrade each chain, in order and each in its own transaction, to its head or `targets[chain.name]`."""
    engine = create_engine(normalize_url(url))
    try:
        for chain in chains:
            async with engine.begin() as connection:
                await connection.run_sync(_upgrade, chain, (targets or {}).get(chain.name, "head"))
    finally:
        await engine.dispose()


async def current_revisions(url: str, chains: list[MigrationChain]) -> dict[str, str | None]:
    engine = create_engine(normalize_url(url))
    try:
        async with engine.connect() as connection:
            return {chain.name: await connection.run_sync(_current, chain) for chain in chains}
    finally:
        await engine.dispose()


def run_env() -> None:
    """The body of every chain's env.py: migrate on the connection `upgrade()` hands over."""
    from alembic import context

    config = context.config
    connection: Any = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run CityOS migrations through cityos_platform.migrate.upgrade()")
    context.configure(
        connection=connection,
        target_metadata=config.attributes.get("metadata"),
        version_table=config.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
