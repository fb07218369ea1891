"""Covers: create, get, list, update with a field mask, delete; risk scores from the analytics job.

Covers are infrastructure of their owner (a utility, a department), not public information: a caller
reaches a cover when its organization owns, operates or maintains it, and changes it when it owns or
operates it (`cityos_platform.tenancy`); any other cover does not exist for it (NOT_FOUND). Every
change is an event on the outbox (`manholes.cover.created|updated|deleted`), scoped to the cover's
owner and cell.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format, timestamp_pb2
from sqlalchemy import and_, delete, func, or_, select

from cityos.common.v1 import resources_pb2
from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_manholes.models import ALARM_RESOLVED, AlarmRow, CoverRow, WorkOrderRow
from cityos_manholes.settings import ManholesSettings
from cityos_platform.areas import Area, AreaRegistry, cell_for
from cityos_platform.db import Database, Tx
from cityos_platform.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import Access, can_reach, not_found, owner_for_new, visible_clause

RESOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
COVER_UPDATABLE = {
    "display_name",
    "kind",
    "location",
    "road_class",
    "material",
    "install_angle_deg",
    "device",
    "thresholds",
    "ownership.operator_organization",
    "ownership.maintainer_organization",
}
KINDS = frozenset(value for value in manholes_pb2.CoverKind.values() if value)
ROAD_CLASSES = frozenset(value for value in manholes_pb2.RoadClass.values() if value)
# Thresholds: field -> (lowest, highest, unit); every bound inclusive except a gas's lower bound.
THRESHOLD_RANGES: dict[str, tuple[float, float, str]] = {
    "tilt_deg": (1.0, 90.0, "degrees"),
    "water_level_m": (0.0, 20.0, "metres"),
    "battery_low_v": (2.0, 4.2, "V"),
    "hysteresis": (0.0, 0.5, "of the threshold"),
}
GAS_LIMITS: dict[str, tuple[float, str]] = {
    "ch4_pct_lel": (100.0, "% LEL"),
    "h2s_ppm": (1000.0, "ppm"),
    "co_ppm": (1000.0, "ppm"),
    "voc_ppm": (1000.0, "ppm"),
}
HEARTBEAT_RANGE = (timedelta(minutes=1), timedelta(days=7))
MAX_SCORES = 10_000
# The (in-)active states of work orders: a cover with active ones cannot go.
ACTIVE_WORK_ORDERS = (
    manholes_pb2.WORK_ORDER_STATUS_PLANNED,
    manholes_pb2.WORK_ORDER_STATUS_IN_PROGRESS,
)
Violations = list[tuple[str, str]]


def _stamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def name_id(name: str, collection: str, field: str = "name") -> str:
    prefix, _, resource_id = name.partition("/")
    if prefix != collection or not RESOURCE_ID.match(resource_id):
        raise InvalidArgument.field(
            field, f"must look like {collection}/{{id}}, the id [a-z0-9][a-z0-9-]{{0,62}}"
        )
    return resource_id


def _mask(paths: Sequence[str]) -> list[str]:
    unknown = [path for path in paths if path not in COVER_UPDATABLE]
    if not paths or unknown:
        raise InvalidArgument.field(
            "update_mask", f"name the fields to change among {', '.join(sorted(COVER_UPDATABLE))}"
        )
    return list(paths)


def _check_etag(requested: str, row: CoverRow) -> None:
    if requested and requested != row.etag:
        raise Aborted(
            "it changed since it was read; read it again and reapply the change",
            reason="ETAG_MISMATCH",
            metadata={"current_etag": row.etag},
        )


# -- validation -------------------------------------------------------------------------------------


def threshold_problems(thresholds: manholes_pb2.Thresholds, field: str = "cover.thresholds") -> Violations:
    problems: Violations = []
    present = {descriptor.name for descriptor, _ in thresholds.ListFields()}
    for name, (low, high, unit) in THRESHOLD_RANGES.items():
        if name in present:
            value = getattr(thresholds, name)
            if not _finite(value) or not low <= value <= high:
                problems.append((f"{field}.{name}", f"from {low:g} to {high:g} {unit}"))
    for name, (most, unit) in GAS_LIMITS.items():
        if name in present:
            value = getattr(thresholds, name)
            if not _finite(value) or not 0 < value <= most:
                problems.append((f"{field}.{name}", f"above 0 and at most {most:g} {unit}"))
    if thresholds.HasField("heartbeat_timeout"):
        timeout = thresholds.heartbeat_timeout
        shortest, longest = HEARTBEAT_RANGE
        if not (0 <= timeout.nanos < 1_000_000_000 and shortest <= timeout.ToTimedelta() <= longest):
            problems.append((f"{field}.heartbeat_timeout", "from 1 minute to 7 days"))
    return problems


def _location_problems(cover: manholes_pb2.Cover) -> Violations:
    if not cover.HasField("location"):
        return [("cover.location", "is required")]
    problems: Violations = []
    latitude, longitude = cover.location.latitude, cover.location.longitude
    if not _finite(latitude) or not -90.0 <= latitude <= 90.0:
        problems.append(("cover.location.latitude", "must be a number from -90 to 90"))
    if not _finite(longitude) or not -180.0 <= longitude <= 180.0:
        problems.append(("cover.location.longitude", "must be a number from -180 to 180"))
    return problems


def cover_problems(cover: manholes_pb2.Cover, paths: Sequence[str] | None) -> Violations:
    """The problems of the fields being set (all of them on create: `paths` None)."""

    def setting(path: str) -> bool:
        return paths is None or path in paths

    problems: Violations = []
    if setting("display_name") and not 1 <= len(cover.display_name) <= 200:
        problems.append(("cover.display_name", "must be 1 to 200 characters"))
    if setting("kind") and cover.kind not in KINDS:
        problems.append(
            ("cover.kind", "must be one of SEWER, STORM_WATER, POWER, TELECOM, WATER_SUPPLY, GAS, HEAT")
        )
    if setting("location"):
        problems += _location_problems(cover)
    if setting("road_class") and cover.road_class not in ROAD_CLASSES:
        problems.append(
            ("cover.road_class", "must be one of EXPRESSWAY, ARTERIAL, COLLECTOR, LOCAL, SIDEWALK, NON_ROAD")
        )
    if setting("material") and len(cover.material) > 50:
        problems.append(("cover.material", "at most 50 characters"))
    if setting("install_angle_deg") and (
        not _finite(cover.install_angle_deg) or not 0 <= cover.install_angle_deg <= 90
    ):
        problems.append(("cover.install_angle_deg", "from 0 to 90 degrees"))
    if setting("device") and cover.device:
        prefix, _, device_id = cover.device.partition("/")
        if prefix != "devices" or not RESOURCE_ID.match(device_id):
            problems.append(("cover.device", "must look like devices/{id}, the id [a-z0-9][a-z0-9-]{0,62}"))
    if setting("thresholds"):
        problems += threshold_problems(cover.thresholds)
    for role in ("operator_organization", "maintainer_organization"):
        if setting(f"ownership.{role}") and len(getattr(cover.ownership, role)) > 64:
            problems.append((f"cover.ownership.{role}", "at most 64 characters"))
    return problems


# -- conversions ------------------------------------------------------------------------------------


def cover_to_proto(row: CoverRow) -> manholes_pb2.Cover:
    state = manholes_pb2.CoverState(
        open=row.open,
        tilt_deg=row.tilt_deg,
        displaced=row.displaced,
        gases=row.gases,
        smoke=row.smoke,
        heartbeat_missed=row.heartbeat_missed,
    )
    for optional in ("water_level_m", "temperature_c", "battery_v", "rsrp_dbm"):
        value = getattr(row, optional)
        if value is not None:
            setattr(state, optional, value)
    if row.reading_time is not None:
        state.reading_time.CopyFrom(_stamp(row.reading_time))
    if row.heard_time is not None:
        state.heard_time.CopyFrom(_stamp(row.heard_time))
    cover = manholes_pb2.Cover(
        name=f"covers/{row.cover_id}",
        display_name=row.display_name,
        kind=row.kind,  # type: ignore[arg-type]
        ownership=resources_pb2.Ownership(
            owner_organization=row.owner_organization,
            operator_organization=row.operator_organization,
            maintainer_organization=row.maintainer_organization,
        ),
        location=resources_pb2.GeoPoint(latitude=row.latitude, longitude=row.longitude),
        road_class=row.road_class,  # type: ignore[arg-type]
        material=row.material,
        install_angle_deg=row.install_angle_deg,
        device=f"devices/{row.device_id}" if row.device_id else "",
        thresholds=json_format.ParseDict(row.thresholds, manholes_pb2.Thresholds()),
        state=state,
        area_cell=row.area_cell,
        etag=row.etag,
        create_time=_stamp(row.create_time),
        update_time=_stamp(row.update_time),
    )
    # The analytics job's latest score, else the one from the cover's alarm history (risk.py); none
    # until the history scorer first ran over a new cover.
    if row.risk_score is not None:
        cover.risk.CopyFrom(
            manholes_pb2.RiskScore(
                score=row.risk_score,
                source=row.risk_source,  # type: ignore[arg-type]
                model_version=row.risk_model_version,
                computed_time=_stamp(row.risk_time) if row.risk_time else None,
            )
        )
    return cover


def emit(tx: Tx, event: str, payload: manholes_pb2.Cover, row: CoverRow) -> None:
    """An event of the cover's owner, in the cover's cell."""
    tx.emit(
        f"manholes.{event}",
        payload,
        subject=payload.name,
        owner_organization=row.owner_organization,
        area_cell=row.area_cell,
    )


def _clear_live_state(row: CoverRow) -> None:
    """Another terminal: the old one's readings say nothing about the cover."""
    row.open, row.tilt_deg, row.displaced, row.smoke = False, 0.0, False, False
    row.water_level_m = row.temperature_c = row.battery_v = row.rsrp_dbm = None
    row.gases = {}
    row.reading_time = row.heard_time = None
    row.heartbeat_missed = False


class CoverServicer(manholes_pb2_grpc.CoverServiceServicer):
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        areas: AreaRegistry,
        settings: ManholesSettings | None = None,
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas
        self.settings = settings or ManholesSettings()

    # -- helpers ------------------------------------------------------------------------------------

    async def _writable(self, tx: Tx, cover_id: str, name: str) -> CoverRow:
        row = await tx.session.get(CoverRow, cover_id, with_for_update=True)
        if row is None or not can_reach(row, current_call().principal, Access.WRITE):
            raise not_found("cover", name)
        return row

    @staticmethod
    async def _device_free(tx: Tx, device: str, cover_id: str) -> None:
        """A terminal watches one cover."""
        if not device:
            return
        device_id = device.partition("/")[2]
        taken = await tx.session.scalar(select(CoverRow.cover_id).where(CoverRow.device_id == device_id))
        if taken is not None and taken != cover_id:
            # Which cover holds it is the other cover's owner's business: name none.
            raise AlreadyExists(f"{device} already watches another cover", reason="DEVICE_BOUND")

    def _area(self, spec: str) -> Area | None:
        return self.areas.resolve(spec) if spec else None

    # -- CRUD ---------------------------------------------------------------------------------------

    async def CreateCover(
        self, request: manholes_pb2.CreateCoverRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.Cover:
        caller = current_call().principal
        cover = request.cover
        problems = cover_problems(cover, None)
        if not RESOURCE_ID.match(request.cover_id):
            problems.append(("cover_id", "must be [a-z0-9][a-z0-9-]{0,62}"))
        if problems:
            raise InvalidArgument.many(problems)
        cell = cell_for(cover.location.latitude, cover.location.longitude, field="cover.location")
        owner = owner_for_new(caller, cover.ownership.owner_organization)

        async def create(tx: Tx) -> manholes_pb2.Cover:
            if await tx.session.get(CoverRow, request.cover_id) is not None:
                raise AlreadyExists(f"covers/{request.cover_id} already exists", reason="COVER_EXISTS")
            await self._device_free(tx, cover.device, request.cover_id)
            row = CoverRow(
                cover_id=request.cover_id,
                display_name=cover.display_name,
                kind=cover.kind,
                road_class=cover.road_class,
                material=cover.material,
                install_angle_deg=cover.install_angle_deg,
                device_id=cover.device.partition("/")[2] or None,
                thresholds=json_format.MessageToDict(cover.thresholds),
                latitude=cover.location.latitude,
                longitude=cover.location.longitude,
                area_cell=cell,
                owner_organization=owner,
                operator_organization=cover.ownership.operator_organization,
                maintainer_organization=cover.ownership.maintainer_organization,
                risk_source=int(manholes_pb2.RISK_SOURCE_UNSPECIFIED),
                risk_model_version="",
                etag=uuid.uuid4().hex[:16],
                create_time=tx.now,
                update_time=tx.now,
            )
            _clear_live_state(row)
            tx.session.add(row)
            created = cover_to_proto(row)
            emit(tx, "cover.created", created, row)
            return created

        return await idempotent(self.db, request, manholes_pb2.Cover, create)

    async def GetCover(
        self, request: manholes_pb2.GetCoverRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.Cover:
        cover_id = name_id(request.name, "covers")
        async with self.db.read() as session:
            row = await session.get(CoverRow, cover_id)
        if row is None or not can_reach(row, current_call().principal):
            raise not_found("cover", request.name)
        return cover_to_proto(row)

    async def ListCovers(
        self, request: manholes_pb2.ListCoversRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.ListCoversResponse:
        size = page_size(request.page_size)
        area = self._area(request.area)
        statement = select(CoverRow).where(visible_clause(CoverRow, current_call().principal))
        if request.kind:
            statement = statement.where(CoverRow.kind == request.kind)
        if request.alarmed_only:
            statement = statement.where(
                CoverRow.cover_id.in_(select(AlarmRow.cover_id).where(AlarmRow.state != ALARM_RESOLVED))
            )
        if area is not None:
            statement = statement.where(CoverRow.area_cell.in_(sorted(area.cells)))
        rows, token = await keyset_page(
            self.db, self.page_tokens, request, statement, CoverRow.cover_id, size=size
        )
        if area is not None:  # cells select candidates; the polygon decides (a page may come out short)
            rows = [row for row in rows if area.contains(row.latitude, row.longitude)]
        return manholes_pb2.ListCoversResponse(
            covers=[cover_to_proto(row) for row in rows], next_page_token=token
        )

    async def UpdateCover(
        self, request: manholes_pb2.UpdateCoverRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.Cover:
        cover = request.cover
        cover_id = name_id(cover.name, "covers", "cover.name")
        paths = _mask(request.update_mask.paths)
        problems = cover_problems(cover, paths)
        if problems:
            raise InvalidArgument.many(problems)
        async with self.db.transaction() as tx:
            row = await self._writable(tx, cover_id, cover.name)
            _check_etag(cover.etag, row)
            if "device" in paths:
                await self._device_free(tx, cover.device, cover_id)
                device_id = cover.device.partition("/")[2] or None
                if device_id != row.device_id:
                    row.device_id = device_id
                    _clear_live_state(row)
            if "display_name" in paths:
                row.display_name = cover.display_name
            if "kind" in paths:
                row.kind = cover.kind
            if "location" in paths:
                row.area_cell = cell_for(
                    cover.location.latitude, cover.location.longitude, field="cover.location"
                )
                row.latitude, row.longitude = cover.location.latitude, cover.location.longitude
            if "road_class" in paths:
                row.road_class = cover.road_class
            if "material" in paths:
                row.material = cover.material
            if "install_angle_deg" in paths:
                row.install_angle_deg = cover.install_angle_deg
            if "thresholds" in paths:
                row.thresholds = json_format.MessageToDict(cover.thresholds)
            if "ownership.operator_organization" in paths:
                row.operator_organization = cover.ownership.operator_organization
            if "ownership.maintainer_organization" in paths:
                row.maintainer_organization = cover.ownership.maintainer_organization
            row.etag = uuid.uuid4().hex[:16]
            row.update_time = tx.now
            updated = cover_to_proto(row)
            emit(tx, "cover.updated", updated, row)
            return updated

    async def DeleteCover(
        self, request: manholes_pb2.DeleteCoverRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        cover_id = name_id(request.name, "covers")
        async with self.db.transaction() as tx:
            row = await self._writable(tx, cover_id, request.name)
            open_alarms = int(
                await tx.session.scalar(
                    select(func.count()).where(
                        AlarmRow.cover_id == cover_id, AlarmRow.state != ALARM_RESOLVED
                    )
                )
                or 0
            )
            active_orders = int(
                await tx.session.scalar(
                    select(func.count()).where(
                        WorkOrderRow.cover_id == cover_id, WorkOrderRow.status.in_(ACTIVE_WORK_ORDERS)
                    )
                )
                or 0
            )
            if open_alarms or active_orders:
                raise FailedPrecondition(
                    f"{request.name} has {open_alarms} alarm(s) not resolved and {active_orders} planned or "
                    "running work order(s); resolve, complete or cancel them first",
                    reason="COVER_IN_USE",
                    metadata={"open_alarms": str(open_alarms), "active_work_orders": str(active_orders)},
                )
            # Its finished alarms and work orders go with it: their history is in the events (the lake).
            await tx.session.execute(delete(AlarmRow).where(AlarmRow.cover_id == cover_id))
            await tx.session.execute(delete(WorkOrderRow).where(WorkOrderRow.cover_id == cover_id))
            emit(tx, "cover.deleted", cover_to_proto(row), row)
            await tx.session.delete(row)
        return empty_pb2.Empty()

    # -- risk ---------------------------------------------------------------------------------------

    async def ListCoversByRisk(
        self, request: manholes_pb2.ListCoversByRiskRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.ListCoversByRiskResponse:
        caller = current_call().principal
        size = page_size(request.page_size)
        area = self._area(request.area)
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        statement = select(CoverRow).where(visible_clause(CoverRow, caller))
        if area is not None:
            statement = statement.where(CoverRow.area_cell.in_(sorted(area.cells)))
        if position:
            after_score, after_id = position["score"], position["id"]
            if after_score is None:
                statement = statement.where(CoverRow.risk_score.is_(None), CoverRow.cover_id > after_id)
            else:
                statement = statement.where(
                    or_(
                        CoverRow.risk_score < after_score,
                        and_(CoverRow.risk_score == after_score, CoverRow.cover_id > after_id),
                        CoverRow.risk_score.is_(None),
                    )
                )
        # Highest score first, covers without a score last, then by name.
        statement = statement.order_by(
            CoverRow.risk_score.is_(None), CoverRow.risk_score.desc(), CoverRow.cover_id
        ).limit(size + 1)
        async with self.db.read() as session:
            rows = list((await session.scalars(statement)).all())
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = self.page_tokens.issue(
                subject=caller.subject,
                organization=caller.organization,
                request=request,
                position={"score": last.risk_score, "id": last.cover_id},
            )
        if area is not None:  # cells select candidates; the polygon decides (a page may come out short)
            rows = [row for row in rows if area.contains(row.latitude, row.longitude)]
        return manholes_pb2.ListCoversByRiskResponse(
            covers=[cover_to_proto(row) for row in rows], next_page_token=token
        )

    async def SetRiskScores(
        self, request: manholes_pb2.SetRiskScoresRequest, context: grpc.aio.ServicerContext
    ) -> manholes_pb2.SetRiskScoresResponse:
        caller = current_call().principal
        if caller.client not in self.settings.risk_writers:
            # Every service holds the role `service`: only the analytics job's account writes scores.
            raise PermissionDenied(
                "only the analytics job's service account writes risk scores", reason="NOT_ANALYTICS"
            )
        scores = _score_batch(request)
        computed = request.computed_time.ToDatetime(tzinfo=UTC)
        updated = stale = 0
        async with self.db.transaction() as tx:
            ids = sorted(scores)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = (
                    await tx.session.scalars(
                        select(CoverRow).where(CoverRow.cover_id.in_(chunk)).with_for_update()
                    )
                ).all()
                for row in rows:  # a cover deleted since the job read it is skipped
                    analytics = row.risk_source == manholes_pb2.RISK_SOURCE_ANALYTICS
                    if analytics and row.risk_time is not None and computed < row.risk_time:
                        stale += 1
                        continue
                    row.risk_score = scores[row.cover_id]
                    row.risk_source = int(manholes_pb2.RISK_SOURCE_ANALYTICS)
                    row.risk_model_version = request.model_version
                    row.risk_time = computed
                    updated += 1
        return manholes_pb2.SetRiskScoresResponse(updated=updated, stale=stale)


def _score_batch(request: manholes_pb2.SetRiskScoresRequest) -> dict[str, float]:
    """The scores by cover id, every problem of the request named."""
    problems: Violations = []
    if not 1 <= len(request.scores) <= MAX_SCORES:
        problems.append(("scores", f"1 to {MAX_SCORES:,} scores"))
    if not 1 <= len(request.model_version) <= 100:
        problems.append(("model_version", "must be 1 to 100 characters"))
    if not request.HasField("computed_time"):
        problems.append(("computed_time", "is required"))
    scores: dict[str, Any] = {}
    for index, entry in enumerate(request.scores[:MAX_SCORES]):
        prefix, _, cover_id = entry.cover.partition("/")
        if prefix != "covers" or not RESOURCE_ID.match(cover_id):
            problems.append((f"scores[{index}].cover", "must look like covers/{id}"))
        elif cover_id in scores:
            problems.append((f"scores[{index}].cover", f"{entry.cover} is scored twice"))
        if not _finite(entry.score) or not 0 <= entry.score <= 1:
            problems.append((f"scores[{index}].score", "from 0 to 1"))
        scores[cover_id] = entry.score
    if problems:
        raise InvalidArgument.many(problems[:100])
    return scores
