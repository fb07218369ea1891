"""The datashare tables: the catalog, agreements and their history, the receipt chain, exports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cityos_platform.models import NAMING_CONVENTION, BigId, UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DatasetRow(Base):
    """A catalog entry. `fields` is a list of {name, type, description, classification, nullable};
    `open_data` the publication ({columns, group_by, aggregates, min_group_size, ...}) or null."""

    __tablename__ = "datasets"

    dataset_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    kind: Mapped[int] = mapped_column(Integer)
    owner_organization: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(300))
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    data_model: Mapped[str] = mapped_column(String(100))
    update_frequency: Mapped[str] = mapped_column(String(50))
    licence: Mapped[str] = mapped_column(String(50))
    time_column: Mapped[str] = mapped_column(String(63))
    area_column: Mapped[str] = mapped_column(String(63))
    schema_version: Mapped[int] = mapped_column(Integer)
    open_data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    registered_by: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())
    data_update_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    etag: Mapped[str] = mapped_column(String(32))


class AgreementRow(Base):
    """An agreement. Terms are JSON ({columns, areas, window_start, window_end, min_group_size,
    expire_time}, times as RFC 3339); `expire_time` repeats the terms' in force for the sweep."""

    __tablename__ = "agreements"

    agreement_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(128), index=True)
    consumer_organization: Mapped[str] = mapped_column(String(64), index=True)
    owner_organization: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    requested_terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    terms: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[int] = mapped_column(Integer, index=True)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    requester: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())
    etag: Mapped[str] = mapped_column(String(32))


class TransitionRow(Base):
    """One recorded state change of an agreement (its audit trail)."""

    __tablename__ = "agreement_transitions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    agreement_id: Mapped[str] = mapped_column(String(36), index=True)
    from_state: Mapped[int] = mapped_column(Integer)
    to_state: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(255))
    actor_organization: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(UtcDateTime())
    terms: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ReceiptRow(Base):
    """One link of the receipt chain (cityos_datashare.receipts)."""

    __tablename__ = "receipts"

    sequence: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime())
    subject: Mapped[str] = mapped_column(String(255))
    consumer_organization: Mapped[str] = mapped_column(String(64), index=True)
    owner_organization: Mapped[str] = mapped_column(String(64), index=True)
    dataset_id: Mapped[str] = mapped_column(String(128), index=True)
    agreement_id: Mapped[str] = mapped_column(String(36), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    columns: Mapped[list[str]] = mapped_column(JSON)
    row_count: Mapped[int] = mapped_column(BigInteger)
    query_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[int] = mapped_column(Integer)
    completed: Mapped[bool] = mapped_column(Boolean)
    previous_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[str] = mapped_column(String(16))


class ExportRow(Base):
    """An extract written to the lake under an agreement; deleted with the agreement's end."""

    __tablename__ = "exports"

    export_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    agreement_id: Mapped[str] = mapped_column(String(36), index=True)
    path: Mapped[str] = mapped_column(String(500))
    row_count: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    url_expire_time: Mapped[datetime] = mapped_column(UtcDateTime())
    deleted: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (Index("ix_exports_live", "agreement_id", "deleted"),)
