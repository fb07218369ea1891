"""Sites, groups and spots: create, get, list, update with a field mask, delete; spot status by hand.

Parking is public information: every signed-in caller reads sites, groups and spots. Changing them is
the site owner's or its operator's (a PPP concession holder operates the sites it runs); a group or a
spot belongs to its site's organizations. Every change is an event on the outbox (`parking.site.*`,
`parking.group.*`, `parking.spot.*`), scoped to the site's owner and cell.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import grpc
from google.protobuf import duration_pb2, empty_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from sqlalchemy import func, or_, select, update

from cityos.common.v1 import resources_pb2
from cityos.parking.v1 import parking_pb2, parking_pb2_grpc, reservations_pb2
from cityos_parking.models import GroupRow, ReservationRow, SessionRow, SiteRow, SpotRow
from cityos_parking.settings import ParkingSettings
from cityos_parking.tariffs import tariff_problems
from cityos_platform.areas import AreaRegistry, cell_for
from cityos_platform.db import Database, Tx
from cityos_platform.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import Access, can_reach, not_found, owner_for_new

RESOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TAG = re.compile(r"^[a-z0-9:_-]{1,63}$")
VEHICLE_TYPES = frozenset({"car", "motorcycle", "bicycle", "truck", "bus", "van", "electric-vehicle"})
SITE_UPDATABLE = {
    "display_name",
    "location",
    "detection_type",
    "allowed_vehicle_types",
    "tariff",
    "capacity",
    "ownership.operator_organization",
    "ownership.maintainer_organization",
}
MAX_CAPACITY = 100_000
GROUP_UPDATABLE = {"display_name", "categories"}
SPOT_UPDATABLE = {
    "display_name",
    "group",
    "location",
    "sensor",
    "width_m",
    "length_m",
    "allowed_vehicle_types",
}
Violations = list[tuple[str, str]]
DEFAULT_HEARTBEAT_TIMEOUT = timedelta(
    seconds=ParkingSettings.model_fields["sensor_heartbeat_timeout_s"].default
)


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def name_id(name: str, collection: str, field: str = "name") -> str:
    prefix, _, resource_id = name.partition("/")
    if prefix != collection or not RESOURCE_ID.match(resource_id):
        raise InvalidArgument.field(
            field, f"must look like {collection}/{{id}}, the id [a-z0-9][a-z0-9-]{{0,62}}"
        )
    return resource_id


def _display_name(value: str, field: str) -> Violations:
    return [] if 1 <= len(value) <= 200 else [(field, "must be 1 to 200 characters")]


def _vehicle_types(values: Sequence[str], field: str) -> Violations:
    return [
        (f"{field}[{index}]", f"{value!r} is not one of {', '.join(sorted(VEHICLE_TYPES))}")
        for index, value in enumerate(values)
        if value not in VEHICLE_TYPES
    ]


def _mask(paths: Sequence[str], updatable: set[str]) -> list[str]:
    unknown = [path for path in paths if path not in updatable]
    if not paths or unknown:
        raise InvalidArgument.field(
            "update_mask", f"name the fields to change among {', '.join(sorted(updatable))}"
        )
    return list(paths)


def _check_etag(requested: str, row: SiteRow | GroupRow | SpotRow) -> None:
    if requested and requested != row.etag:
        raise Aborted(
            "it changed since it was read; read it again and reapply the change",
            reason="ETAG_MISMATCH",
            metadata={"current_etag": row.etag},
        )


# -- conversions ------------------------------------------------------------------------------------


def site_to_proto(row: SiteRow, total_spots: int) -> parking_pb2.Site:
    return parking_pb2.Site(
        name=f"sites/{row.site_id}",
        display_name=row.display_name,
        kind=row.kind,  # type: ignore[arg-type]
        location=resources_pb2.GeoPoint(latitude=row.latitude, longitude=row.longitude),
        ownership=resources_pb2.Ownership(
            owner_organization=row.owner_organization,
            operator_organization=row.operator_organization,
            maintainer_organization=row.maintainer_organization,
        ),
        detection_type=row.detection_type,  # type: ignore[arg-type]
        allowed_vehicle_types=row.allowed_vehicle_types,
        tariff=json_format.ParseDict(row.tariff, parking_pb2.Tariff()),
        area_cell=row.area_cell,
        total_spots=total_spots,
        capacity=row.capacity,
        etag=row.etag,
        create_time=_stamp(row.create_time),
        update_time=_stamp(row.update_time),
    )


def group_to_proto(row: GroupRow, total_spots: int) -> parking_pb2.Group:
    return parking_pb2.Group(
        name=f"groups/{row.group_id}",
        display_name=row.display_name,
        site=f"sites/{row.site_id}",
        categories=row.categories,
        total_spots=total_spots,
        etag=row.etag,
        create_time=_stamp(row.create_time),
        update_time=_stamp(row.update_time),
    )


def spot_to_proto(row: SpotRow) -> parking_pb2.Spot:
    return parking_pb2.Spot(
        name=f"spots/{row.spot_id}",
        display_name=row.display_name,
        site=f"sites/{row.site_id}",
        group=f"groups/{row.group_id}" if row.group_id else "",
        location=resources_pb2.GeoPoint(latitude=row.latitude, longitude=row.longitude),
        sensor=f"devices/{row.sensor_id}" if row.sensor_id else "",
        width_m=row.width_m,
        length_m=row.length_m,
        allowed_vehicle_types=row.allowed_vehicle_types,
        status=row.status,  # type: ignore[arg-type]
        status_time=_stamp(row.status_time),
        area_cell=row.area_cell,
        etag=row.etag,
        create_time=_stamp(row.create_time),
        update_time=_stamp(row.update_time),
        sensor_heard_time=_stamp(row.sensor_heard_time) if row.sensor_heard_time else None,
        forbidden_parking=bool(row.forbidden_parking),
    )


def sensor_state(row: SpotRow, now: datetime, heartbeat_timeout: timedelta) -> int:
    """What the spot's sensor last said (FREE or OCCUPIED) while it is alive (heard within the
    heartbeat timeout); UNKNOWN without a sensor, before its first reading, or once it went silent."""
    heard = row.sensor_heard_time
    if row.sensor_id and row.sensor_status and heard is not None and now - heard <= heartbeat_timeout:
        return row.sensor_status
    return int(parking_pb2.SPOT_STATUS_UNKNOWN)


def _site_problems(site: parking_pb2.Site, paths: Sequence[str] | None) -> Violations:
    """The problems of the fields being set (all of them on create: `paths` None)."""

    def setting(path: str) -> bool:
        return paths is None or path in paths

    problems: Violations = []
    if setting("display_name"):
        problems += _display_name(site.display_name, "site.display_name")
    if paths is None and site.kind not in (parking_pb2.SITE_KIND_ON_STREET, parking_pb2.SITE_KIND_OFF_STREET):
        problems.append(("site.kind", "must be ON_STREET or OFF_STREET"))
    if setting("detection_type") and site.detection_type not in (
        parking_pb2.DETECTION_TYPE_SINGLE_SPACE,
        parking_pb2.DETECTION_TYPE_BALANCING,
        parking_pb2.DETECTION_TYPE_MANUAL,
    ):
        problems.append(("site.detection_type", "must be SINGLE_SPACE, BALANCING or MANUAL"))
    if setting("allowed_vehicle_types"):
        if not site.allowed_vehicle_types:
            problems.append(("site.allowed_vehicle_types", "name at least one vehicle type"))
        problems += _vehicle_types(site.allowed_vehicle_types, "site.allowed_vehicle_types")
    if setting("location") and not site.HasField("location"):
        problems.append(("site.location", "is required"))
    if setting("tariff"):
        if not site.HasField("tariff"):
            problems.append(("site.tariff", "is required (price_per_minute 0 for free parking)"))
        else:
            problems += tariff_problems(site.tariff)
    if setting("capacity"):
        if not 0 <= site.capacity <= MAX_CAPACITY:
            problems.append(("site.capacity", f"from 0 (count the spots) to {MAX_CAPACITY:,}"))
        elif (
            site.capacity
            and (paths is None or "detection_type" in paths)
            and (site.detection_type != parking_pb2.DETECTION_TYPE_BALANCING)
        ):
            problems.append(
                ("site.capacity", "only a BALANCING site has a capacity; other sites count their spots")
            )
    return problems


class ParkingServicer(parking_pb2_grpc.ParkingServiceServicer):
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        areas: AreaRegistry,
        *,
        sensor_heartbeat_timeout: timedelta = DEFAULT_HEARTBEAT_TIMEOUT,
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas
        self.sensor_heartbeat_timeout = sensor_heartbeat_timeout

    # -- helpers ------------------------------------------------------------------------------------

    async def _writable_site(self, tx: Tx, site_id: str, name: str) -> SiteRow:
        row = await tx.session.get(SiteRow, site_id, with_for_update=True)
        if row is None or not can_reach(row, current_call().principal, Access.WRITE):
            raise not_found("site", name)
        return row

    async def _count_spots(self, tx_or_session: object, **where: str) -> int:
        session = getattr(tx_or_session, "session", tx_or_session)
        column = SpotRow.site_id if "site_id" in where else SpotRow.group_id
        value = where.get("site_id") or where.get("group_id")
        return int(await session.scalar(select(func.count()).where(column == value)) or 0)  # type: ignore[attr-defined]

    # -- sites --------------------------------------------------------------------------------------

    async def CreateSite(
        self, request: parking_pb2.CreateSiteRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Site:
        caller = current_call().principal
        site = request.site
        problems = _site_problems(site, None)
        if not RESOURCE_ID.match(request.site_id):
            problems.append(("site_id", "must be [a-z0-9][a-z0-9-]{0,62}"))
        if problems:
            raise InvalidArgument.many(problems)
        cell = cell_for(site.location.latitude, site.location.longitude, field="site.location")
        owner = owner_for_new(caller, site.ownership.owner_organization)

        async def create(tx: Tx) -> parking_pb2.Site:
            if await tx.session.get(SiteRow, request.site_id) is not None:
                raise AlreadyExists(f"sites/{request.site_id} already exists", reason="SITE_EXISTS")
            row = SiteRow(
                site_id=request.site_id,
                display_name=site.display_name,
                kind=site.kind,
                detection_type=site.detection_type,
                allowed_vehicle_types=list(site.allowed_vehicle_types),
                tariff=json_format.MessageToDict(site.tariff),
                capacity=site.capacity,
                gate_occupied=0,
                announced_status=0,
                latitude=site.location.latitude,
                longitude=site.location.longitude,
                area_cell=cell,
                owner_organization=owner,
                operator_organization=site.ownership.operator_organization,
                maintainer_organization=site.ownership.maintainer_organization,
                etag=uuid.uuid4().hex[:16],
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            created = site_to_proto(row, 0)
            emit(tx, "site.created", created, created.name, row)
            return created

        return await idempotent(self.db, request, parking_pb2.Site, create)

    async def GetSite(
        self, request: parking_pb2.GetSiteRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Site:
        site_id = name_id(request.name, "sites")
        async with self.db.read() as session:
            row = await session.get(SiteRow, site_id)
            if row is None:
                raise not_found("site", request.name)
            return site_to_proto(row, await self._count_spots(session, site_id=site_id))

    async def ListSites(
        self, request: parking_pb2.ListSitesRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.ListSitesResponse:
        statement = select(SiteRow)
        if request.kind:
            statement = statement.where(SiteRow.kind == request.kind)
        if request.organization:
            statement = statement.where(
                or_(
                    SiteRow.owner_organization == request.organization,
                    SiteRow.operator_organization == request.organization,
                    SiteRow.maintainer_organization == request.organization,
                )
            )
        area = self.areas.resolve(request.area) if request.area else None
        if area is not None:
            statement = statement.where(SiteRow.area_cell.in_(sorted(area.cells)))
        rows, token = await keyset_page(
            self.db, self.page_tokens, request, statement, SiteRow.site_id, size=page_size(request.page_size)
        )
        if area is not None:  # cells select candidates; the polygon decides (a page may come out short)
            rows = [row for row in rows if area.contains(row.latitude, row.longitude)]
        async with self.db.read() as session:
            counts = dict(
                (
                    await session.execute(
                        select(SpotRow.site_id, func.count())
                        .where(SpotRow.site_id.in_([row.site_id for row in rows]))
                        .group_by(SpotRow.site_id)
                    )
                ).all()
            )
        return parking_pb2.ListSitesResponse(
            sites=[site_to_proto(row, counts.get(row.site_id, 0)) for row in rows], next_page_token=token
        )

    async def UpdateSite(
        self, request: parking_pb2.UpdateSiteRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Site:
        site = request.site
        site_id = name_id(site.name, "sites", "site.name")
        paths = _mask(request.update_mask.paths, SITE_UPDATABLE)
        problems = _site_problems(site, paths)
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            row = await self._writable_site(tx, site_id, site.name)
            _check_etag(site.etag, row)
            if "display_name" in paths:
                row.display_name = site.display_name
            if "location" in paths:
                row.area_cell = cell_for(
                    site.location.latitude, site.location.longitude, field="site.location"
                )
                row.latitude, row.longitude = site.location.latitude, site.location.longitude
            if "detection_type" in paths:
                row.detection_type = site.detection_type
            if "allowed_vehicle_types" in paths:
                row.allowed_vehicle_types = list(site.allowed_vehicle_types)
            if "tariff" in paths:
                row.tariff = json_format.MessageToDict(site.tariff)
            if "capacity" in paths:
                if site.capacity and row.detection_type != parking_pb2.DETECTION_TYPE_BALANCING:
                    raise InvalidArgument.field(
                        "site.capacity", "only a BALANCING site has a capacity; other sites count their spots"
                    )
                row.capacity = site.capacity
            if "ownership.operator_organization" in paths:
                row.operator_organization = site.ownership.operator_organization
            if "ownership.maintainer_organization" in paths:
                row.maintainer_organization = site.ownership.maintainer_organization
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            updated = site_to_proto(row, await self._count_spots(tx, site_id=site_id))
            emit(tx, "site.updated", updated, updated.name, row)
            return updated

    async def DeleteSite(
        self, request: parking_pb2.DeleteSiteRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        site_id = name_id(request.name, "sites")
        async with self.db.transaction() as tx:
            row = await self._writable_site(tx, site_id, request.name)
            spots = await self._count_spots(tx, site_id=site_id)
            groups = await tx.session.scalar(select(func.count()).where(GroupRow.site_id == site_id))
            if spots or groups:
                raise FailedPrecondition(
                    f"{request.name} still holds {spots} spot(s) and {groups} group(s); delete them first",
                    reason="SITE_NOT_EMPTY",
                )
            records = sum(
                [
                    int(await tx.session.scalar(select(func.count()).where(table.site_id == site_id)) or 0)
                    for table in (ReservationRow, SessionRow)
                ]
            )
            if records:
                raise FailedPrecondition(
                    f"{request.name} has {records} reservation(s) and session(s) on record (billing "
                    "history); a site with history is kept — close it with its opening hours instead",
                    reason="SITE_HAS_HISTORY",
                )
            emit(tx, "site.deleted", site_to_proto(row, 0), request.name, row)
            await tx.session.delete(row)
        return empty_pb2.Empty()

    # -- groups -------------------------------------------------------------------------------------

    async def CreateGroup(
        self, request: parking_pb2.CreateGroupRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Group:
        group = request.group
        problems = _display_name(group.display_name, "group.display_name")
        if not RESOURCE_ID.match(request.group_id):
            problems.append(("group_id", "must be [a-z0-9][a-z0-9-]{0,62}"))
        problems += _categories(group.categories)
        if not group.site:
            problems.append(("group.site", "is required"))
        if problems:
            raise InvalidArgument.many(problems)
        site_id = name_id(group.site, "sites", "group.site")

        async def create(tx: Tx) -> parking_pb2.Group:
            site = await self._writable_site(tx, site_id, group.site)
            if await tx.session.get(GroupRow, request.group_id) is not None:
                raise AlreadyExists(f"groups/{request.group_id} already exists", reason="GROUP_EXISTS")
            row = GroupRow(
                group_id=request.group_id,
                site_id=site_id,
                display_name=group.display_name,
                categories=list(group.categories),
                etag=uuid.uuid4().hex[:16],
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            created = group_to_proto(row, 0)
            emit(tx, "group.created", created, created.name, site)
            return created

        return await idempotent(self.db, request, parking_pb2.Group, create)

    async def GetGroup(
        self, request: parking_pb2.GetGroupRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Group:
        group_id = name_id(request.name, "groups")
        async with self.db.read() as session:
            row = await session.get(GroupRow, group_id)
            if row is None:
                raise not_found("group", request.name)
            return group_to_proto(row, await self._count_spots(session, group_id=group_id))

    async def ListGroups(
        self, request: parking_pb2.ListGroupsRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.ListGroupsResponse:
        statement = select(GroupRow)
        if request.site:
            statement = statement.where(GroupRow.site_id == name_id(request.site, "sites", "site"))
        rows, token = await keyset_page(
            self.db,
            self.page_tokens,
            request,
            statement,
            GroupRow.group_id,
            size=page_size(request.page_size),
        )
        async with self.db.read() as session:
            counts = dict(
                (
                    await session.execute(
                        select(SpotRow.group_id, func.count())
                        .where(SpotRow.group_id.in_([row.group_id for row in rows]))
                        .group_by(SpotRow.group_id)
                    )
                ).all()
            )
        return parking_pb2.ListGroupsResponse(
            groups=[group_to_proto(row, counts.get(row.group_id, 0)) for row in rows], next_page_token=token
        )

    async def UpdateGroup(
        self, request: parking_pb2.UpdateGroupRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Group:
        group = request.group
        group_id = name_id(group.name, "groups", "group.name")
        paths = _mask(request.update_mask.paths, GROUP_UPDATABLE)
        problems = _display_name(group.display_name, "group.display_name") if "display_name" in paths else []
        if "categories" in paths:
            problems += _categories(group.categories)
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            row = await tx.session.get(GroupRow, group_id, with_for_update=True)
            if row is None:
                raise not_found("group", group.name)
            site = await self._writable_site(tx, row.site_id, group.name)
            _check_etag(group.etag, row)
            if "display_name" in paths:
                row.display_name = group.display_name
            if "categories" in paths:
                row.categories = list(group.categories)
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            updated = group_to_proto(row, await self._count_spots(tx, group_id=group_id))
            emit(tx, "group.updated", updated, updated.name, site)
            return updated

    async def DeleteGroup(
        self, request: parking_pb2.DeleteGroupRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        group_id = name_id(request.name, "groups")
        async with self.db.transaction() as tx:
            row = await tx.session.get(GroupRow, group_id, with_for_update=True)
            if row is None:
                raise not_found("group", request.name)
            site = await self._writable_site(tx, row.site_id, request.name)
            spots = await self._count_spots(tx, group_id=group_id)
            if spots:
                raise FailedPrecondition(
                    f"{request.name} still holds {spots} spot(s); move or delete them first",
                    reason="GROUP_NOT_EMPTY",
                )
            emit(tx, "group.deleted", group_to_proto(row, 0), request.name, site)
            await tx.session.delete(row)
        return empty_pb2.Empty()

    # -- spots --------------------------------------------------------------------------------------

    async def _spot_references(
        self, tx: Tx, spot: parking_pb2.Spot, site_id: str, paths: Sequence[str] | None
    ) -> None:
        """The group must be of the spot's site; the sensor must watch no other spot."""
        if (paths is None or "group" in paths) and spot.group:
            group = await tx.session.get(GroupRow, name_id(spot.group, "groups", "spot.group"))
            if group is None or group.site_id != site_id:
                raise InvalidArgument.field("spot.group", f"{spot.group} is not a group of sites/{site_id}")
        if (paths is None or "sensor" in paths) and spot.sensor:
            sensor_id = name_id(spot.sensor, "devices", "spot.sensor")
            taken = await tx.session.scalar(select(SpotRow.spot_id).where(SpotRow.sensor_id == sensor_id))
            if taken is not None and taken != spot.name.partition("/")[2]:
                raise AlreadyExists(f"{spot.sensor} already watches spots/{taken}", reason="SENSOR_BOUND")

    async def CreateSpot(
        self, request: parking_pb2.CreateSpotRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Spot:
        spot = request.spot
        problems = _spot_problems(spot, None)
        if not RESOURCE_ID.match(request.spot_id):
            problems.append(("spot_id", "must be [a-z0-9][a-z0-9-]{0,62}"))
        if not spot.site:
            problems.append(("spot.site", "is required"))
        if problems:
            raise InvalidArgument.many(problems)
        site_id = name_id(spot.site, "sites", "spot.site")
        cell = cell_for(spot.location.latitude, spot.location.longitude, field="spot.location")

        async def create(tx: Tx) -> parking_pb2.Spot:
            site = await self._writable_site(tx, site_id, spot.site)
            if await tx.session.get(SpotRow, request.spot_id) is not None:
                raise AlreadyExists(f"spots/{request.spot_id} already exists", reason="SPOT_EXISTS")
            await self._spot_references(tx, spot, site_id, None)
            row = SpotRow(
                spot_id=request.spot_id,
                site_id=site_id,
                group_id=spot.group.partition("/")[2] or None,
                display_name=spot.display_name,
                sensor_id=spot.sensor.partition("/")[2] or None,
                width_m=spot.width_m,
                length_m=spot.length_m,
                allowed_vehicle_types=list(spot.allowed_vehicle_types),
                status=int(parking_pb2.SPOT_STATUS_UNKNOWN),
                status_time=tx.now,
                status_reason="",
                latitude=spot.location.latitude,
                longitude=spot.location.longitude,
                area_cell=cell,
                etag=uuid.uuid4().hex[:16],
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            created = spot_to_proto(row)
            emit(tx, "spot.created", created, created.name, site)
            return created

        return await idempotent(self.db, request, parking_pb2.Spot, create)

    async def GetSpot(
        self, request: parking_pb2.GetSpotRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Spot:
        spot_id = name_id(request.name, "spots")
        async with self.db.read() as session:
            row = await session.get(SpotRow, spot_id)
        if row is None:
            raise not_found("spot", request.name)
        return spot_to_proto(row)

    async def ListSpots(
        self, request: parking_pb2.ListSpotsRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.ListSpotsResponse:
        statement = select(SpotRow)
        if request.site:
            statement = statement.where(SpotRow.site_id == name_id(request.site, "sites", "site"))
        if request.group:
            statement = statement.where(SpotRow.group_id == name_id(request.group, "groups", "group"))
        if request.status:
            statement = statement.where(SpotRow.status == request.status)
        rows, token = await keyset_page(
            self.db, self.page_tokens, request, statement, SpotRow.spot_id, size=page_size(request.page_size)
        )
        return parking_pb2.ListSpotsResponse(
            spots=[spot_to_proto(row) for row in rows], next_page_token=token
        )

    async def UpdateSpot(
        self, request: parking_pb2.UpdateSpotRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Spot:
        spot = request.spot
        spot_id = name_id(spot.name, "spots", "spot.name")
        paths = _mask(request.update_mask.paths, SPOT_UPDATABLE)
        problems = _spot_problems(spot, paths)
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            row = await tx.session.get(SpotRow, spot_id, with_for_update=True)
            if row is None:
                raise not_found("spot", spot.name)
            site = await self._writable_site(tx, row.site_id, spot.name)
            _check_etag(spot.etag, row)
            await self._spot_references(tx, spot, row.site_id, paths)
            if "display_name" in paths:
                row.display_name = spot.display_name
            if "group" in paths:
                row.group_id = spot.group.partition("/")[2] or None
            if "location" in paths:
                row.area_cell = cell_for(
                    spot.location.latitude, spot.location.longitude, field="spot.location"
                )
                row.latitude, row.longitude = spot.location.latitude, spot.location.longitude
            if "sensor" in paths and (spot.sensor.partition("/")[2] or None) != row.sensor_id:
                row.sensor_id = spot.sensor.partition("/")[2] or None
                # Another sensor: the old one's state and times say nothing about it.
                row.sensor_status, row.sensor_time, row.sensor_heard_time = 0, None, None
                row.forbidden_parking = False
            if "width_m" in paths:
                row.width_m = spot.width_m
            if "length_m" in paths:
                row.length_m = spot.length_m
            if "allowed_vehicle_types" in paths:
                row.allowed_vehicle_types = list(spot.allowed_vehicle_types)
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            updated = spot_to_proto(row)
            emit(tx, "spot.updated", updated, updated.name, site)
            return updated

    async def DeleteSpot(
        self, request: parking_pb2.DeleteSpotRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        spot_id = name_id(request.name, "spots")
        async with self.db.transaction() as tx:
            row = await tx.session.get(SpotRow, spot_id, with_for_update=True)
            if row is None:
                raise not_found("spot", request.name)
            site = await self._writable_site(tx, row.site_id, request.name)
            await _detach_spot_history(tx, spot_id, request.name)
            emit(tx, "spot.deleted", spot_to_proto(row), request.name, site)
            await tx.session.delete(row)
        return empty_pb2.Empty()

    async def SetSpotStatus(
        self, request: parking_pb2.SetSpotStatusRequest, context: grpc.aio.ServicerContext
    ) -> parking_pb2.Spot:
        spot_id = name_id(request.name, "spots")
        problems: Violations = []
        if request.status == parking_pb2.SPOT_STATUS_UNSPECIFIED:
            problems.append(("status", "must be FREE, OCCUPIED, CLOSED or UNKNOWN"))
        if len(request.reason) > 200:
            problems.append(("reason", "at most 200 characters"))
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            row = await tx.session.get(SpotRow, spot_id, with_for_update=True)
            if row is None:
                raise not_found("spot", request.name)
            site = await self._writable_site(tx, row.site_id, request.name)
            status = int(request.status)
            if status == parking_pb2.SPOT_STATUS_UNKNOWN:  # handed back: what its live sensor says
                status = sensor_state(row, tx.now, self.sensor_heartbeat_timeout)
            return change_status(tx, site, row, status, source="operator", reason=request.reason)


EVENT_OF_STATUS: dict[int, str] = {
    parking_pb2.SPOT_STATUS_FREE: "spot.vacated",
    parking_pb2.SPOT_STATUS_OCCUPIED: "spot.occupied",
    parking_pb2.SPOT_STATUS_CLOSED: "spot.closed",
    parking_pb2.SPOT_STATUS_UNKNOWN: "spot.unknown",
}


def emit(tx: Tx, event: str, payload: Message, subject: str, site: SiteRow) -> None:
    """An event of the site's owner, in the site's cell."""
    tx.emit(
        f"parking.{event}",
        payload,
        subject=subject,
        owner_organization=site.owner_organization,
        area_cell=site.area_cell,
    )


def change_status(
    tx: Tx, site: SiteRow, row: SpotRow, status: int, *, source: str, reason: str
) -> parking_pb2.Spot:
    """Move a spot to a status, recording how long the previous one lasted; an event when it changed."""
    previous, since = row.status, row.status_time
    if previous != status:
        row.status, row.status_time = status, tx.now
    row.status_reason = reason if source == "operator" else ""
    row.etag = uuid.uuid4().hex[:16]
    row.update_time = tx.now
    spot = spot_to_proto(row)
    if previous != status:
        lasted = duration_pb2.Duration()
        lasted.FromTimedelta(tx.now - since)
        changed = parking_pb2.SpotStatusChanged(
            spot=spot,
            previous_status=previous,  # type: ignore[arg-type]
            previous_duration=lasted,
            source=source,
        )
        emit(tx, EVENT_OF_STATUS[status], changed, spot.name, site)
    return spot


async def _detach_spot_history(tx: Tx, spot_id: str, name: str) -> None:
    """A spot with a live hold or a running session is in use; past ones keep their site, not the spot."""
    now = tx.now
    live = await tx.session.scalar(
        select(func.count()).where(
            ReservationRow.spot_id == spot_id,
            ReservationRow.state.in_(
                [reservations_pb2.RESERVATION_STATE_HELD, reservations_pb2.RESERVATION_STATE_CHECKED_IN]
            ),
            ReservationRow.end_time > now,
        )
    )
    running = await tx.session.scalar(
        select(func.count()).where(
            SessionRow.spot_id == spot_id, SessionRow.state == reservations_pb2.SESSION_STATE_ACTIVE
        )
    )
    if live or running:
        raise FailedPrecondition(
            f"{name} has {live} live reservation(s) and {running} running session(s); "
            "cancel or stop them first",
            reason="SPOT_IN_USE",
        )
    for table in (ReservationRow, SessionRow):
        await tx.session.execute(update(table).where(table.spot_id == spot_id).values(spot_id=None))


def _categories(values: Sequence[str]) -> Violations:
    problems = [("group.categories", "at most 16")] if len(values) > 16 else []
    return problems + [
        (f"group.categories[{index}]", "must be 1 to 63 of [a-z0-9:_-]")
        for index, value in enumerate(values)
        if not TAG.match(value)
    ]


def _spot_problems(spot: parking_pb2.Spot, paths: Sequence[str] | None) -> Violations:
    def setting(path: str) -> bool:
        return paths is None or path in paths

    problems: Violations = []
    if setting("display_name"):
        problems += _display_name(spot.display_name, "spot.display_name")
    if setting("location") and not spot.HasField("location"):
        problems.append(("spot.location", "is required"))
    for size in ("width_m", "length_m"):
        if setting(size) and not 0 <= getattr(spot, size) <= 50:
            problems.append((f"spot.{size}", "from 0 (not known) to 50 metres"))
    if setting("allowed_vehicle_types"):
        problems += _vehicle_types(spot.allowed_vehicle_types, "spot.allowed_vehicle_types")
    return problems
