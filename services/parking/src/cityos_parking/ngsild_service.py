"""The NGSI-LD view over the API: the service's rows and live counts as Smart Data Models entities.

`cityos_parking.ngsild` is the pure mapping (dataclasses in, JSON-LD out, validated against the models'
schemas); this module builds its dataclasses from the database rows and the live counts, and answers
`NgsiLdService.GetEntity` / `ListEntities`. Reading is public like the rest of parking.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation

import grpc
from google.protobuf import json_format
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cityos.parking.v1 import ngsild_pb2, ngsild_pb2_grpc, parking_pb2
from cityos_parking import ngsild
from cityos_parking.availability import count_occupancy
from cityos_parking.models import GroupRow, SiteRow, SpotRow
from cityos_platform.areas import AreaRegistry
from cityos_platform.db import Database
from cityos_platform.errors import InvalidArgument
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import not_found

KIND: dict[int, str] = {
    parking_pb2.SITE_KIND_ON_STREET: "on-street",
    parking_pb2.SITE_KIND_OFF_STREET: "off-street",
}
DETECTION: dict[int, str] = {
    parking_pb2.DETECTION_TYPE_SINGLE_SPACE: "single-space",
    parking_pb2.DETECTION_TYPE_BALANCING: "balancing",
    parking_pb2.DETECTION_TYPE_MANUAL: "manual",
}
SPOT_STATUS: dict[int, str] = {
    parking_pb2.SPOT_STATUS_FREE: "free",
    parking_pb2.SPOT_STATUS_OCCUPIED: "occupied",
    parking_pb2.SPOT_STATUS_CLOSED: "closed",
    parking_pb2.SPOT_STATUS_UNKNOWN: "unknown",
}
OFF_STREET_STATUS: dict[int, str] = {
    parking_pb2.SITE_STATUS_SPACES_AVAILABLE: "spacesAvailable",
    parking_pb2.SITE_STATUS_ALMOST_FULL: "almostFull",
    parking_pb2.SITE_STATUS_FULL: "full",
    parking_pb2.SITE_STATUS_CLOSED: "closed",
}
TYPES = ("OnStreetParking", "OffStreetParking", "ParkingGroup", "ParkingSpot")
MAX_ENTITY_ID = 300


def _windows(windows: Sequence[parking_pb2.WeeklyWindow]) -> tuple[ngsild.WeeklyWindow, ...]:
    return tuple(
        ngsild.WeeklyWindow(start=window.start, end=window.end, weekdays=tuple(window.weekdays))
        for window in windows
    )


def _tariff(tariff: parking_pb2.Tariff) -> ngsild.Tariff | None:
    try:
        price = Decimal(tariff.price_per_minute)
    except InvalidOperation:
        return None
    return ngsild.Tariff(
        price_per_minute=price,
        currency=tariff.currency,
        maximum_stay=tariff.maximum_stay.ToTimedelta() if tariff.HasField("maximum_stay") else None,
        opening_hours=_windows(tariff.opening_hours) or None,
    )


def site_entity(
    row: SiteRow, counts: parking_pb2.Occupancy, counts_time: datetime | None
) -> ngsild.ParkingSite:
    """A site row and its live counts as an OnStreetParking / OffStreetParking entity."""
    tariff = json_format.ParseDict(row.tariff, parking_pb2.Tariff(), ignore_unknown_fields=True)
    kind = KIND[row.kind]
    total = counts.total
    out_of_service = min(total, counts.closed + counts.unknown)
    occupied = min(total - out_of_service, counts.occupied)
    available = min(total - out_of_service - occupied, counts.free)
    return ngsild.ParkingSite(
        id=row.site_id,
        name=row.display_name,
        kind=kind,  # type: ignore[arg-type]
        location=ngsild.GeoPoint(row.latitude, row.longitude),
        total_spots=total,
        available_spots=available,
        occupied_spots=occupied,
        out_of_service_spots=out_of_service,
        detection=DETECTION[row.detection_type],  # type: ignore[arg-type]
        date_modified=row.update_time,
        allowed_vehicle_types=tuple(row.allowed_vehicle_types),
        permits=tuple(
            ngsild.Permit(name=permit.name, hours=_windows(permit.hours)) for permit in tariff.permits
        ),
        tariff=_tariff(tariff),
        off_street_status=OFF_STREET_STATUS.get(counts.status) if kind == "off-street" else None,  # type: ignore[arg-type]
        owner_organization=row.owner_organization,
        occupancy_modified=counts_time,
    )


def group_entity(row: GroupRow, site: SiteRow, counts: parking_pb2.Occupancy) -> ngsild.ParkingGroup:
    return ngsild.ParkingGroup(
        id=row.group_id,
        name=row.display_name,
        site_id=row.site_id,
        site_kind=KIND[site.kind],  # type: ignore[arg-type]
        total_spots=counts.total,
        available_spots=min(counts.total, counts.free),
        date_modified=row.update_time,
        categories=tuple(row.categories),
    )


def spot_entity(row: SpotRow, site: SiteRow) -> ngsild.ParkingSpot:
    return ngsild.ParkingSpot(
        id=row.spot_id,
        name=row.display_name,
        site_id=row.site_id,
        category=KIND[site.kind],  # type: ignore[arg-type]
        location=ngsild.GeoPoint(row.latitude, row.longitude),
        status=SPOT_STATUS[row.status],  # type: ignore[arg-type]
        status_time=row.status_time,
        group_id=row.group_id,
        device_id=row.sensor_id,
        width_m=row.width_m or None,
        length_m=row.length_m or None,
        date_modified=row.update_time,
    )


def render(entity: ngsild.Entity, form: int) -> str:
    document = (
        ngsild.key_values(entity)
        if form == ngsild_pb2.ENTITY_FORMAT_KEY_VALUES
        else ngsild.normalized(entity)
    )
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _parse_id(entity_id: str) -> tuple[str, str]:
    prefix = "urn:ngsi-ld:"
    kind, _, local = entity_id.removeprefix(prefix).partition(":")
    if not entity_id.startswith(prefix) or kind not in TYPES or not local or len(entity_id) > MAX_ENTITY_ID:
        raise InvalidArgument.field("id", f"must be urn:ngsi-ld:<{'|'.join(TYPES)}>:<id>")
    return kind, local


class NgsiLdServicer(ngsild_pb2_grpc.NgsiLdServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens, areas: AreaRegistry) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas

    async def _sites(self, session: AsyncSession, rows: Sequence[SiteRow]) -> list[ngsild.ParkingSite]:
        counts = await count_occupancy(session, rows, self.db.clock.now())
        # When the counts last changed: the latest spot status change (a gate-counted site: its row).
        changed = dict(
            (
                await session.execute(
                    select(SpotRow.site_id, func.max(SpotRow.status_time))
                    .where(SpotRow.site_id.in_([row.site_id for row in rows]))
                    .group_by(SpotRow.site_id)
                )
            ).all()
        )
        return [
            site_entity(
                row,
                counts.sites[row.site_id],
                max(changed.get(row.site_id) or row.update_time, row.update_time),
            )
            for row in rows
        ]

    async def _groups(self, session: AsyncSession, rows: Sequence[GroupRow]) -> list[ngsild.ParkingGroup]:
        sites = {
            site.site_id: site
            for site in (
                await session.scalars(
                    select(SiteRow).where(SiteRow.site_id.in_({row.site_id for row in rows}))
                )
            )
        }
        counts = await count_occupancy(session, list(sites.values()), self.db.clock.now(), with_groups=True)
        empty = parking_pb2.Occupancy()
        return [group_entity(row, sites[row.site_id], counts.groups.get(row.group_id, empty)) for row in rows]

    async def _spots(self, session: AsyncSession, rows: Sequence[SpotRow]) -> list[ngsild.ParkingSpot]:
        sites = {
            site.site_id: site
            for site in (
                await session.scalars(
                    select(SiteRow).where(SiteRow.site_id.in_({row.site_id for row in rows}))
                )
            )
        }
        return [spot_entity(row, sites[row.site_id]) for row in rows]

    async def GetEntity(
        self, request: ngsild_pb2.GetEntityRequest, context: grpc.aio.ServicerContext
    ) -> ngsild_pb2.GetEntityResponse:
        kind, local = _parse_id(request.id)
        async with self.db.read() as session:
            entity: ngsild.Entity | None = None
            if kind in ("OnStreetParking", "OffStreetParking"):
                site = await session.get(SiteRow, local)
                if site is not None and ngsild.ENTITY_TYPES[KIND[site.kind]] == kind:  # type: ignore[index]
                    entity = (await self._sites(session, [site]))[0]
            elif kind == "ParkingGroup":
                group = await session.get(GroupRow, local)
                if group is not None:
                    entity = (await self._groups(session, [group]))[0]
            else:
                spot = await session.get(SpotRow, local)
                if spot is not None:
                    entity = (await self._spots(session, [spot]))[0]
        if entity is None:
            raise not_found("entity", request.id)
        return ngsild_pb2.GetEntityResponse(entity_json=render(entity, request.format))

    async def ListEntities(
        self, request: ngsild_pb2.ListEntitiesRequest, context: grpc.aio.ServicerContext
    ) -> ngsild_pb2.ListEntitiesResponse:
        if request.type not in TYPES:
            raise InvalidArgument.field("type", f"one of {', '.join(TYPES)}")
        area = self.areas.resolve(request.area) if request.area else None
        size = page_size(request.page_size)
        if request.type in ("OnStreetParking", "OffStreetParking"):
            kind = (
                parking_pb2.SITE_KIND_ON_STREET
                if request.type == "OnStreetParking"
                else parking_pb2.SITE_KIND_OFF_STREET
            )
            statement = select(SiteRow).where(SiteRow.kind == kind)
            if area is not None:
                statement = statement.where(SiteRow.area_cell.in_(sorted(area.cells)))
            rows, token = await keyset_page(
                self.db, self.page_tokens, request, statement, SiteRow.site_id, size=size
            )
            rows = [row for row in rows if area is None or area.contains(row.latitude, row.longitude)]
            async with self.db.read() as session:
                entities: Sequence[ngsild.Entity] = await self._sites(session, rows)
        elif request.type == "ParkingGroup":
            statement = select(GroupRow)
            if area is not None:
                inside = select(SiteRow.site_id).where(SiteRow.area_cell.in_(sorted(area.cells)))
                statement = statement.where(GroupRow.site_id.in_(inside))
            rows, token = await keyset_page(
                self.db, self.page_tokens, request, statement, GroupRow.group_id, size=size
            )
            async with self.db.read() as session:
                entities = await self._groups(session, rows)
        else:
            statement = select(SpotRow)
            if area is not None:
                statement = statement.where(SpotRow.area_cell.in_(sorted(area.cells)))
            rows, token = await keyset_page(
                self.db, self.page_tokens, request, statement, SpotRow.spot_id, size=size
            )
            rows = [row for row in rows if area is None or area.contains(row.latitude, row.longitude)]
            async with self.db.read() as session:
                entities = await self._spots(session, rows)
        return ngsild_pb2.ListEntitiesResponse(
            entities_json=[render(entity, request.format) for entity in entities], next_page_token=token
        )


__all__ = ["NgsiLdServicer", "group_entity", "render", "site_entity", "spot_entity"]
