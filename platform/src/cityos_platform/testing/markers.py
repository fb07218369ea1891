"""The markers service (`cityos.testing.v1.MarkerService`): the platform's storage contracts end to end.

Ownership scoping, area filters, idempotent creates, field-mask updates with etags, page tokens and the
outbox, in the shape every city service follows: a servicer that reads like the API, a small domain
layer, SQLAlchemy models and an Alembic chain (`cityos_platform/testing/migrations`). Mounted by the
test suite only; never registered as a city service.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime

import grpc
from google.protobuf import empty_pb2, timestamp_pb2
from sqlalchemy import MetaData, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cityos.common.v1 import resources_pb2
from cityos.testing.v1 import markers_pb2, markers_pb2_grpc
from cityos_platform.areas import AreaRegistry, cell_for
from cityos_platform.db import Database, Tx
from cityos_platform.errors import Aborted, AlreadyExists, InvalidArgument
from cityos_platform.events import event_stream_mount
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.migrate import PLATFORM_CHAIN, service_chain, upgrade
from cityos_platform.models import NAMING_CONVENTION, LocatedMixin, OwnedMixin, UtcDateTime
from cityos_platform.paging import PageTokens, page_size
from cityos_platform.server import Mount
from cityos_platform.tenancy import Access, can_reach, not_found, owner_for_new, visible_clause

MARKER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
UPDATABLE = {"label", "location", "ownership.operator_organization", "ownership.maintainer_organization"}


class MarkersBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class MarkerRow(OwnedMixin, LocatedMixin, MarkersBase):
    __tablename__ = "markers"

    marker_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    etag: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


CHAIN = service_chain("cityos_platform.testing", MarkersBase.metadata)


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def to_proto(row: MarkerRow) -> markers_pb2.Marker:
    return markers_pb2.Marker(
        name=f"markers/{row.marker_id}",
        label=row.label,
        location=resources_pb2.GeoPoint(latitude=row.latitude, longitude=row.longitude),
        ownership=resources_pb2.Ownership(
            owner_organization=row.owner_organization,
            operator_organization=row.operator_organization,
            maintainer_organization=row.maintainer_organization,
        ),
        area_cell=row.area_cell,
        etag=row.etag,
        create_time=_timestamp(row.create_time),
        update_time=_timestamp(row.update_time),
    )


def marker_id_of(name: str, field: str = "name") -> str:
    prefix, _, marker_id = name.partition("/")
    if prefix != "markers" or not MARKER_ID.match(marker_id):
        raise InvalidArgument.field(field, "must look like markers/{marker}, {marker} being [a-z0-9-]{1,63}")
    return marker_id


def _validate_label(label: str, field: str) -> list[tuple[str, str]]:
    return [] if 1 <= len(label) <= 200 else [(field, "must be 1 to 200 characters")]


def _emit(tx: Tx, kind: str, row: MarkerRow) -> None:
    tx.emit(
        f"testing.marker.{kind}",
        markers_pb2.MarkerChanged(marker=to_proto(row)),
        subject=f"markers/{row.marker_id}",
        owner_organization=row.owner_organization,
        area_cell=row.area_cell,
    )


class MarkerServicer(markers_pb2_grpc.MarkerServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens, areas: AreaRegistry) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas

    async def CreateMarker(
        self, request: markers_pb2.CreateMarkerRequest, context: grpc.aio.ServicerContext
    ) -> markers_pb2.Marker:
        caller = current_call().principal
        marker = request.marker
        violations = _validate_label(marker.label, "marker.label")
        if not MARKER_ID.match(request.marker_id):
            violations.append(("marker_id", "must be 1 to 63 of [a-z0-9-], starting with a letter or digit"))
        if not marker.HasField("location"):
            violations.append(("marker.location", "is required"))
        if violations:
            raise InvalidArgument.many(violations)
        cell = cell_for(marker.location.latitude, marker.location.longitude, field="marker.location")
        owner = owner_for_new(caller, marker.ownership.owner_organization)

        async def create(tx: Tx) -> markers_pb2.Marker:
            if await tx.session.get(MarkerRow, request.marker_id) is not None:
                raise AlreadyExists(
                    f"marker 'markers/{request.marker_id}' already exists", reason="MARKER_EXISTS"
                )
            row = MarkerRow(
                marker_id=request.marker_id,
                label=marker.label,
                latitude=marker.location.latitude,
                longitude=marker.location.longitude,
                area_cell=cell,
                owner_organization=owner,
                operator_organization=marker.ownership.operator_organization,
                maintainer_organization=marker.ownership.maintainer_organization,
                etag=uuid.uuid4().hex[:16],
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            _emit(tx, "created", row)
            return to_proto(row)

        return await idempotent(self.db, request, markers_pb2.Marker, create)

    async def GetMarker(
        self, request: markers_pb2.GetMarkerRequest, context: grpc.aio.ServicerContext
    ) -> markers_pb2.Marker:
        marker_id = marker_id_of(request.name)
        async with self.db.read() as session:
            row = await session.get(MarkerRow, marker_id)
        if row is None or not can_reach(row, current_call().principal):
            raise not_found("marker", request.name)
        return to_proto(row)

    async def ListMarkers(
        self, request: markers_pb2.ListMarkersRequest, context: grpc.aio.ServicerContext
    ) -> markers_pb2.ListMarkersResponse:
        caller = current_call().principal
        size = page_size(request.page_size)
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        area = self.areas.resolve(request.area) if request.area else None
        after = position["after"] if position else ""
        statement = select(MarkerRow).where(visible_clause(MarkerRow, caller))
        if area is not None:
            statement = statement.where(MarkerRow.area_cell.in_(sorted(area.cells)))
        page: list[MarkerRow] = []
        more = False
        async with self.db.read() as session:
            # Cells select candidates; the polygon decides. Read in chunks until the page is full.
            while len(page) <= size:
                chunk = list(
                    (
                        await session.scalars(
                            statement.where(MarkerRow.marker_id > after)
                            .order_by(MarkerRow.marker_id)
                            .limit(size + 1)
                        )
                    ).all()
                )
                for row in chunk:
                    if area is None or area.contains(row.latitude, row.longitude):
                        page.append(row)
                if len(chunk) <= size:
                    break
                after = chunk[-1].marker_id
        if len(page) > size:
            page, more = page[:size], True
        next_token = ""
        if more:
            next_token = self.page_tokens.issue(
                subject=caller.subject,
                organization=caller.organization,
                request=request,
                position={"after": page[-1].marker_id},
            )
        return markers_pb2.ListMarkersResponse(
            markers=[to_proto(r) for r in page], next_page_token=next_token
        )

    async def UpdateMarker(
        self, request: markers_pb2.UpdateMarkerRequest, context: grpc.aio.ServicerContext
    ) -> markers_pb2.Marker:
        caller = current_call().principal
        marker = request.marker
        marker_id = marker_id_of(marker.name, "marker.name")
        paths: Sequence[str] = list(request.update_mask.paths)
        violations = [("update_mask", f"cannot update {p!r}") for p in paths if p not in UPDATABLE]
        if not paths:
            violations.append(("update_mask", "name at least one field to update"))
        if "label" in paths:
            violations += _validate_label(marker.label, "marker.label")
        if violations:
            raise InvalidArgument.many(violations)
        cell = (
            cell_for(marker.location.latitude, marker.location.longitude, field="marker.location")
            if ("location" in paths)
            else None
        )
        async with self.db.transaction() as tx:
            row = await tx.session.get(MarkerRow, marker_id, with_for_update=True)
            if row is None or not can_reach(row, caller, Access.WRITE):
                raise not_found("marker", marker.name)
            if marker.etag and marker.etag != row.etag:
                raise Aborted(
                    "the marker changed since it was read; read it again and reapply the change",
                    reason="ETAG_MISMATCH",
                    metadata={"current_etag": row.etag},
                )
            if "label" in paths:
                row.label = marker.label
            if cell is not None:
                row.latitude, row.longitude, row.area_cell = (
                    marker.location.latitude,
                    marker.location.longitude,
                    cell,
                )
            if "ownership.operator_organization" in paths:
                row.operator_organization = marker.ownership.operator_organization
            if "ownership.maintainer_organization" in paths:
                row.maintainer_organization = marker.ownership.maintainer_organization
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            _emit(tx, "updated", row)
            return to_proto(row)

    async def DeleteMarker(
        self, request: markers_pb2.DeleteMarkerRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        marker_id = marker_id_of(request.name)
        async with self.db.transaction() as tx:
            row = await tx.session.get(MarkerRow, marker_id, with_for_update=True)
            if row is None or not can_reach(row, current_call().principal, Access.WRITE):
                raise not_found("marker", request.name)
            await tx.session.delete(row)
            tx.emit(
                "testing.marker.deleted",
                markers_pb2.MarkerDeleted(name=request.name),
                subject=request.name,
                owner_organization=row.owner_organization,
                area_cell=row.area_cell,
            )
        return empty_pb2.Empty()


async def open_database(url: str, *, source: str = "markers") -> Database:
    """Migrate (platform chain, then the markers chain) and open the markers database."""
    await upgrade(url, [PLATFORM_CHAIN, CHAIN])
    return Database(url, source=source)


def mounts(db: Database, page_tokens: PageTokens, areas: AreaRegistry | None = None) -> list[Mount]:
    return [
        Mount(
            descriptor=markers_pb2.DESCRIPTOR.services_by_name["MarkerService"],
            servicer=MarkerServicer(db, page_tokens, areas or AreaRegistry.default()),
            add_to_server=markers_pb2_grpc.add_MarkerServiceServicer_to_server,
        ),
        event_stream_mount(db, poll_interval_s=0.2),
    ]
