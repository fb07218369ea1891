"""The streetlight inventory: lamp models, cabinets, feeders, groups and lights — create, get, list,
update with a field mask (and the etag read), delete.

Tenancy. Models, cabinets, groups and lights are infrastructure of their owner (a department, a PPP
operator): a caller reaches one when its organization owns, operates or maintains it, and changes it
when it owns or operates it (`cityos_platform.tenancy`); any other does not exist for it (NOT_FOUND). A
feeder has no ownership of its own: it is its cabinet's, so who reaches the cabinet reaches its feeders.
A reference a request makes (a feeder's cabinet, a light's model, feeder and group, a group's cabinet
and schedule) must be reachable by the caller too, else NOT_FOUND on it; a light joins only a group of
its own owner (FAILED_PRECONDITION `GROUP_OF_ANOTHER_OWNER`), unless a city-wide caller says so.

Topology. A light hangs on a feeder, one circuit of a cabinet; the light keeps its feeder's cabinet
(`LightRow.cabinet_id`), here set when the light takes a feeder and rewritten for every light on a
feeder that moves to another cabinet. A controller (`devices/{id}`) is bound to one light or one
cabinet; binding another one clears the live state the previous controller left.

Derived outputs. A light's `status` is DEFECTIVE_LAMP while an open LAMP_FAILURE fault names it, else
the crew's reported status, else OK; `open_faults` are the kinds of the open faults whose subject is the
light; `control` is what is in force (the `desired_*` and `override_*` columns, which the schedule
applier and the control service write; this module never changes them). A feeder's `energized` comes
from its cabinet's readings; a group counts its lights and those that report on (ON or LOW).

Deleting refuses what others still lean on: a model a light uses, a cabinet with feeders or groups, a
feeder with lights, a group with lights, a light with open faults. A deleted light's hourly energy rows
stay: the group and cabinet totals of the past are made of them (and the lake keeps them anyway).

Every change is an event on the outbox, `streetlights.<light_model|cabinet|feeder|group|light>.
created|updated|deleted`, carrying the resource, scoped to its owner (a feeder's: its cabinet's) and,
for located resources, their cell (a feeder's: its cabinet's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, timedelta
from typing import Any, TypeVar

import grpc
import h3  # type: ignore[import-untyped]
from google.protobuf import duration_pb2, empty_pb2
from google.protobuf.message import Message
from sqlalchemy import Select, case, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from cityos.common.v1 import resources_pb2
from cityos.streetlights.v1 import faults_pb2, inventory_pb2, inventory_pb2_grpc
from cityos_platform.areas import AREA_CELL_RESOLUTION, Area, AreaRegistry, cell_for
from cityos_platform.db import Database, Tx
from cityos_platform.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.models import OwnedMixin
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import Access, can_reach, is_city_wide, not_found, owner_for_new, visible_clause
from cityos_streetlights.common import (
    ID_RULE,
    RESOURCE_ID,
    Violations,
    check_etag,
    emit,
    finite,
    location_problems,
    mask,
    name_id,
    new_etag,
    ref_id,
    reference_problem,
    stamp,
)
from cityos_streetlights.metrics import MAX_CIRCUITS
from cityos_streetlights.models import (
    FAULT_CLEARED,
    CabinetRow,
    FaultRow,
    FeederRow,
    GroupRow,
    LightModelRow,
    LightRow,
    ScheduleRow,
)
from cityos_streetlights.settings import StreetlightsSettings

inv = inventory_pb2
R = TypeVar("R", bound=OwnedMixin)

OWNERSHIP_UPDATABLE = {"ownership.operator_organization", "ownership.maintainer_organization"}
LIGHT_MODEL_UPDATABLE = {
    "display_name",
    "lamp_technology",
    "rated_power_w",
    "standby_power_w",
    "luminous_flux_lm",
    "color_temperature_k",
    "working_life_h",
    "minimum_dim_level",
    "manufacturer",
    *OWNERSHIP_UPDATABLE,
}
CABINET_UPDATABLE = {
    "display_name",
    "location",
    "working_mode",
    "device",
    "serial_number",
    "maximum_power_w",
    *OWNERSHIP_UPDATABLE,
}
FEEDER_UPDATABLE = {"display_name", "cabinet", "circuit", "phase"}
GROUP_UPDATABLE = {"display_name", "description", "cabinet", "schedule", *OWNERSHIP_UPDATABLE}
LIGHT_UPDATABLE = {
    "display_name",
    "location",
    "model",
    "feeder",
    "group",
    "device",
    "pole_number",
    "street",
    "location_category",
    "lantern_height_m",
    "last_lamp_change_time",
    "reported_status",
    "heartbeat_timeout",
    *OWNERSHIP_UPDATABLE,
}

LAMP_TECHNOLOGIES = frozenset(value for value in inv.LampTechnology.values() if value)
WORKING_MODES = frozenset(value for value in inv.WorkingMode.values() if value)
PHASES = frozenset(value for value in inv.Phase.values() if value)
# What a crew reports; DEFECTIVE_LAMP is derived from the open lamp failures, never set.
REPORTED_STATUSES = frozenset(
    {
        inv.LIGHT_STATUS_UNSPECIFIED,
        inv.LIGHT_STATUS_OK,
        inv.LIGHT_STATUS_COLUMN_ISSUE,
        inv.LIGHT_STATUS_BROKEN_LANTERN,
    }
)
# Smart Data Models Streetlight.locationCategory.
LOCATION_CATEGORIES = (
    "bridge",
    "centralIsland",
    "facade",
    "garden",
    "park",
    "parking",
    "pedestrianPath",
    "playground",
    "road",
    "sidewalk",
    "tunnel",
)
HEARTBEAT_RANGE = (timedelta(minutes=1), timedelta(days=7))
DEFAULT_HEARTBEAT_S = 2 * 3600
BURNING = (inv.POWER_STATE_ON, inv.POWER_STATE_LOW)
FAULT_KIND_PREFIX = "FAULT_KIND_"


# -- validation -------------------------------------------------------------------------------------


class _Checks:
    """Collects the problems of the fields being set: all of them on create (`paths` None), the
    mask's on update."""

    def __init__(self, paths: Sequence[str] | None, prefix: str) -> None:
        self.paths = paths
        self.prefix = prefix
        self.problems: Violations = []

    def setting(self, path: str) -> bool:
        return self.paths is None or path in self.paths

    def add(self, path: str, description: str) -> None:
        self.problems.append((f"{self.prefix}.{path}", description))

    def text(self, path: str, value: str, low: int, high: int) -> None:
        if self.setting(path) and not low <= len(value) <= high:
            self.add(path, f"must be {low} to {high:,} characters" if low else f"at most {high:,} characters")

    def number(self, path: str, value: float, low: float, high: float, unit: str) -> None:
        if self.setting(path) and (not finite(value) or not low <= value <= high):
            self.add(path, f"from {low:,g} to {high:,g} {unit}")

    def choice(self, path: str, value: int, allowed: Iterable[int], enum: Any) -> None:
        allowed = sorted(allowed)
        if self.setting(path) and value not in allowed:
            self.add(path, "must be one of " + ", ".join(enum.Name(v) for v in allowed))

    def reference(self, path: str, value: str, collection: str, *, required: bool = False) -> None:
        if not self.setting(path):
            return
        if required and not value:
            self.add(path, f"is required: {collection}/{{id}}")
        self.problems += reference_problem(value, collection, f"{self.prefix}.{path}")

    def device(self, value: str) -> None:
        self.reference("device", value, "devices")

    def location(self, message: Any) -> None:
        if self.setting("location"):
            self.problems += location_problems(
                message.location, message.HasField("location"), f"{self.prefix}.location"
            )

    def ownership(self, ownership: resources_pb2.Ownership) -> None:
        self.text("ownership.owner_organization", ownership.owner_organization, 0, 64)
        for role in ("operator_organization", "maintainer_organization"):
            self.text(f"ownership.{role}", getattr(ownership, role), 0, 64)


def light_model_problems(model: inv.LightModel, paths: Sequence[str] | None) -> Violations:
    checks = _Checks(paths, "light_model")
    checks.text("display_name", model.display_name, 1, 200)
    checks.choice("lamp_technology", model.lamp_technology, LAMP_TECHNOLOGIES, inv.LampTechnology)
    checks.number("rated_power_w", model.rated_power_w, 1, 2000, "W (required)")
    checks.number("standby_power_w", model.standby_power_w, 0, 20, "W")
    checks.number("luminous_flux_lm", model.luminous_flux_lm, 0, 200_000, "lm")
    if checks.setting("color_temperature_k") and not (
        model.color_temperature_k == 0 or 1000 <= model.color_temperature_k <= 10_000
    ):
        checks.add("color_temperature_k", "0 (unknown) or from 1,000 to 10,000 K")
    checks.number("working_life_h", model.working_life_h, 0, 200_000, "h")
    checks.number("minimum_dim_level", model.minimum_dim_level, 0, 100, "%")
    checks.text("manufacturer", model.manufacturer, 0, 100)
    checks.ownership(model.ownership)
    return checks.problems


def cabinet_problems(cabinet: inv.Cabinet, paths: Sequence[str] | None) -> Violations:
    checks = _Checks(paths, "cabinet")
    checks.text("display_name", cabinet.display_name, 1, 200)
    checks.location(cabinet)
    checks.choice("working_mode", cabinet.working_mode, WORKING_MODES, inv.WorkingMode)
    checks.device(cabinet.device)
    checks.text("serial_number", cabinet.serial_number, 0, 100)
    checks.number("maximum_power_w", cabinet.maximum_power_w, 0, 1_000_000, "W")
    checks.ownership(cabinet.ownership)
    return checks.problems


def feeder_problems(feeder: inv.Feeder, paths: Sequence[str] | None) -> Violations:
    checks = _Checks(paths, "feeder")
    checks.text("display_name", feeder.display_name, 1, 200)
    checks.reference("cabinet", feeder.cabinet, "cabinets", required=True)
    if checks.setting("circuit") and not 1 <= feeder.circuit <= MAX_CIRCUITS:
        checks.add("circuit", f"from 1 to {MAX_CIRCUITS} (required)")
    checks.choice("phase", feeder.phase, PHASES, inv.Phase)
    return checks.problems


def group_problems(group: inv.Group, paths: Sequence[str] | None) -> Violations:
    checks = _Checks(paths, "group")
    checks.text("display_name", group.display_name, 1, 200)
    checks.text("description", group.description, 0, 2000)
    checks.reference("cabinet", group.cabinet, "cabinets")
    checks.reference("schedule", group.schedule, "schedules")
    checks.ownership(group.ownership)
    return checks.problems


def light_problems(light: inv.Light, paths: Sequence[str] | None) -> Violations:
    checks = _Checks(paths, "light")
    checks.text("display_name", light.display_name, 1, 200)
    checks.location(light)
    checks.reference("model", light.model, "lightModels", required=True)
    checks.reference("feeder", light.feeder, "feeders")
    checks.reference("group", light.group, "groups")
    checks.device(light.device)
    checks.text("pole_number", light.pole_number, 0, 50)
    checks.text("street", light.street, 0, 200)
    if checks.setting("location_category") and light.location_category not in ("", *LOCATION_CATEGORIES):
        checks.add("location_category", "empty or one of " + ", ".join(LOCATION_CATEGORIES))
    checks.number("lantern_height_m", light.lantern_height_m, 0, 60, "m")
    if checks.setting("last_lamp_change_time") and light.HasField("last_lamp_change_time"):
        moment = light.last_lamp_change_time
        if not (0 <= moment.nanos < 1_000_000_000 and 0 <= moment.seconds <= 253_402_300_799):
            checks.add("last_lamp_change_time", "must be a time from 1970 to 9999")
    if checks.setting("reported_status") and light.reported_status not in REPORTED_STATUSES:
        checks.add(
            "reported_status",
            "must be UNSPECIFIED, OK, COLUMN_ISSUE or BROKEN_LANTERN "
            "(DEFECTIVE_LAMP comes from the open lamp failures)",
        )
    if checks.setting("heartbeat_timeout") and light.HasField("heartbeat_timeout"):
        timeout = light.heartbeat_timeout
        shortest, longest = HEARTBEAT_RANGE
        if not (0 <= timeout.nanos < 1_000_000_000 and shortest <= timeout.ToTimedelta() <= longest):
            checks.add("heartbeat_timeout", "from 1 minute to 7 days")
    checks.ownership(light.ownership)
    return checks.problems


def _heartbeat_s(light: inv.Light) -> int:
    if not light.HasField("heartbeat_timeout"):
        return DEFAULT_HEARTBEAT_S
    return int(light.heartbeat_timeout.ToTimedelta().total_seconds())


def _check(problems: Violations, resource_id: str | None = None, field: str = "") -> None:
    if resource_id is not None and not RESOURCE_ID.match(resource_id):
        problems = [*problems, (field, f"must be {ID_RULE}")]
    if problems:
        raise InvalidArgument.many(problems)


# -- conversions ------------------------------------------------------------------------------------


def _ownership(row: OwnedMixin) -> resources_pb2.Ownership:
    return resources_pb2.Ownership(
        owner_organization=row.owner_organization,
        operator_organization=row.operator_organization,
        maintainer_organization=row.maintainer_organization,
    )


def _name(collection: str, resource_id: str | None) -> str:
    return f"{collection}/{resource_id}" if resource_id else ""


def light_model_to_proto(row: LightModelRow) -> inv.LightModel:
    return inv.LightModel(
        name=f"lightModels/{row.light_model_id}",
        display_name=row.display_name,
        ownership=_ownership(row),
        lamp_technology=row.lamp_technology,  # type: ignore[arg-type]
        rated_power_w=row.rated_power_w,
        standby_power_w=row.standby_power_w,
        luminous_flux_lm=row.luminous_flux_lm,
        color_temperature_k=row.color_temperature_k,
        working_life_h=row.working_life_h,
        minimum_dim_level=row.minimum_dim_level,
        manufacturer=row.manufacturer,
        etag=row.etag,
        create_time=stamp(row.create_time),
        update_time=stamp(row.update_time),
    )


def cabinet_to_proto(row: CabinetRow) -> inv.Cabinet:
    state = inv.CabinetState(
        circuits={int(key): bool(closed) for key, closed in (row.circuits or {}).items() if key.isdigit()},
        door_open=row.door_open,
        outage=row.outage,
        heartbeat_missed=row.heartbeat_missed,
    )
    for optional in (
        "voltage_l1_v",
        "voltage_l2_v",
        "voltage_l3_v",
        "active_power_w",
        "energy_wh",
        "power_factor",
    ):
        value = getattr(row, optional)
        if value is not None:
            setattr(state, optional, value)
    if row.reading_time is not None:
        state.reading_time.CopyFrom(stamp(row.reading_time))
    if row.heard_time is not None:
        state.heard_time.CopyFrom(stamp(row.heard_time))
    return inv.Cabinet(
        name=f"cabinets/{row.cabinet_id}",
        display_name=row.display_name,
        ownership=_ownership(row),
        location=resources_pb2.GeoPoint(latitude=row.latitude, longitude=row.longitude),
        working_mode=row.working_mode,  # type: ignore[arg-type]
        device=_name("devices", row.device_id),
        serial_number=row.serial_number,
        maximum_power_w=row.maximum_power_w,
        state=state,
        area_cell=row.area_cell,
        etag=row.etag,
        create_time=stamp(row.create_time),
        update_time=stamp(row.update_time),
    )


def feeder_to_proto(row: FeederRow, cabinet_row: CabinetRow, light_count: int) -> inv.Feeder:
    """A feeder; its ownership is its cabinet's (`cabinet_row`)."""
    return inv.Feeder(
        name=f"feeders/{row.feeder_id}",
        display_name=row.display_name,
        cabinet=f"cabinets/{row.cabinet_id}",
        circuit=row.circuit,
        phase=row.phase,  # type: ignore[arg-type]
        energized=row.energized,
        light_count=light_count,
        ownership=_ownership(cabinet_row),
        etag=row.etag,
        create_time=stamp(row.create_time),
        update_time=stamp(row.update_time),
    )


def group_to_proto(row: GroupRow, light_count: int, lights_on: int) -> inv.Group:
    return inv.Group(
        name=f"groups/{row.group_id}",
        display_name=row.display_name,
        description=row.description,
        ownership=_ownership(row),
        cabinet=_name("cabinets", row.cabinet_id),
        schedule=_name("schedules", row.schedule_id),
        light_count=light_count,
        lights_on=lights_on,
        etag=row.etag,
        create_time=stamp(row.create_time),
        update_time=stamp(row.update_time),
    )


def fault_kind_name(kind: int) -> str:
    """`FAULT_KIND_LAMP_OUT` -> `LAMP_OUT` (a kind this build does not know: its number)."""
    try:
        return faults_pb2.FaultKind.Name(kind).removeprefix(FAULT_KIND_PREFIX)  # type: ignore[arg-type]
    except ValueError:
        return str(kind)


def light_status(reported_status: int, open_fault_kinds: Iterable[int]) -> int:
    """DEFECTIVE_LAMP while a lamp failure is open, else what a crew reported, else OK."""
    if faults_pb2.FAULT_KIND_LAMP_FAILURE in open_fault_kinds:
        return inv.LIGHT_STATUS_DEFECTIVE_LAMP
    return reported_status or inv.LIGHT_STATUS_OK


def light_state(row: LightRow) -> inv.LightState:
    state = inv.LightState(
        power_state=row.power_state,  # type: ignore[arg-type]
        controller_faults=list(row.controller_faults or []),  # type: ignore[arg-type]
        heartbeat_missed=row.heartbeat_missed,
    )
    for optional in (
        "dim_level",
        "power_w",
        "voltage_v",
        "current_a",
        "power_factor",
        "energy_wh",
        "operating_hours",
        "switch_count",
    ):
        value = getattr(row, optional)
        if value is not None:
            setattr(state, optional, value)
    if row.reading_time is not None:
        state.reading_time.CopyFrom(stamp(row.reading_time))
    if row.heard_time is not None:
        state.heard_time.CopyFrom(stamp(row.heard_time))
    return state


def light_control(row: LightRow) -> inv.LightControl | None:
    """What is in force; None while nothing was ever set on the light's twin."""
    if row.desired_level is None:
        return None
    control = inv.LightControl(
        dim_level=row.desired_level,
        source=row.desired_source,  # type: ignore[arg-type]
        schedule=_name("schedules", row.desired_schedule_id),
        step_index=row.desired_step or 0,
        control=_name("controls", row.override_control_id),
    )
    if row.desired_since is not None:
        control.since.CopyFrom(stamp(row.desired_since))
    if row.override_until is not None:
        control.override_expire_time.CopyFrom(stamp(row.override_until))
    if row.next_change_time is not None:
        control.next_change_time.CopyFrom(stamp(row.next_change_time))
    return control


def light_to_proto(row: LightRow, open_fault_kinds: list[int]) -> inv.Light:
    """A light with its live state, what is in force, and `open_fault_kinds` (FaultKind values of the
    open faults whose subject is the light)."""
    kinds = sorted(set(open_fault_kinds))
    light = inv.Light(
        name=f"lights/{row.light_id}",
        display_name=row.display_name,
        ownership=_ownership(row),
        location=resources_pb2.GeoPoint(latitude=row.latitude, longitude=row.longitude),
        model=f"lightModels/{row.light_model_id}",
        feeder=_name("feeders", row.feeder_id),
        cabinet=_name("cabinets", row.cabinet_id),
        group=_name("groups", row.group_id),
        device=_name("devices", row.device_id),
        pole_number=row.pole_number,
        street=row.street,
        location_category=row.location_category,
        lantern_height_m=row.lantern_height_m,
        reported_status=row.reported_status,  # type: ignore[arg-type]
        status=light_status(row.reported_status, kinds),  # type: ignore[arg-type]
        state=light_state(row),
        open_faults=[fault_kind_name(kind) for kind in kinds],
        area_cell=row.area_cell,
        etag=row.etag,
        create_time=stamp(row.create_time),
        update_time=stamp(row.update_time),
        heartbeat_timeout=duration_pb2.Duration(seconds=row.heartbeat_timeout_s),
    )
    if row.last_lamp_change_time is not None:
        light.last_lamp_change_time.CopyFrom(stamp(row.last_lamp_change_time))
    control = light_control(row)
    if control is not None:
        light.control.CopyFrom(control)
    return light


def feeder_energized(cabinet: CabinetRow, circuit: int, phase: int, outage_voltage_v: float) -> bool:
    """What the cabinet's latest readings say of a circuit: its breaker not reported open, no outage,
    and its phase(s) not reported below the outage voltage (a three-phase feeder needs all three)."""
    if cabinet.outage or (cabinet.circuits or {}).get(str(circuit)) is False:
        return False
    l1, l2, l3 = cabinet.voltage_l1_v, cabinet.voltage_l2_v, cabinet.voltage_l3_v
    volts = {int(inv.PHASE_L1): [l1], int(inv.PHASE_L2): [l2], int(inv.PHASE_L3): [l3]}.get(
        phase, [l1, l2, l3]
    )
    return all(value is None or value >= outage_voltage_v for value in volts)


def clear_cabinet_state(row: CabinetRow) -> None:
    """Another controller (or none): the previous one's readings say nothing about the cabinet."""
    row.voltage_l1_v = row.voltage_l2_v = row.voltage_l3_v = None
    row.active_power_w = row.energy_wh = row.power_factor = None
    row.circuits = {}
    row.door_open = row.outage = row.heartbeat_missed = False
    row.reading_time = row.heard_time = None


def clear_light_state(row: LightRow) -> None:
    """Another controller (or none): the previous one's readings say nothing about the light."""
    row.power_state = inv.POWER_STATE_UNSPECIFIED
    row.dim_level = row.power_w = row.voltage_v = row.current_a = row.power_factor = None
    row.energy_wh = row.operating_hours = row.switch_count = None
    row.controller_faults = []
    row.reading_time = row.heard_time = None
    row.heartbeat_missed = False


# -- batch look-ups (one query per page) ------------------------------------------------------------


async def open_fault_kinds(session: AsyncSession, light_ids: Sequence[str]) -> dict[str, list[int]]:
    """The kinds of the open faults of each light (by id), in one query."""
    found: dict[str, list[int]] = {light_id: [] for light_id in light_ids}
    if not light_ids:
        return found
    rows = await session.execute(
        select(FaultRow.subject, FaultRow.kind).where(
            FaultRow.subject.in_([f"lights/{light_id}" for light_id in light_ids]),
            FaultRow.state != FAULT_CLEARED,
        )
    )
    for subject, kind in rows:
        found[subject.partition("/")[2]].append(kind)
    return found


async def feeder_light_counts(session: AsyncSession, feeder_ids: Sequence[str]) -> dict[str, int]:
    if not feeder_ids:
        return {}
    rows = await session.execute(
        select(LightRow.feeder_id, func.count())
        .where(LightRow.feeder_id.in_(feeder_ids))
        .group_by(LightRow.feeder_id)
    )
    return {str(feeder_id): int(count) for feeder_id, count in rows}


async def group_light_counts(session: AsyncSession, group_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(lights, lights reporting on) of each group."""
    if not group_ids:
        return {}
    burning = func.sum(case((LightRow.power_state.in_(BURNING), 1), else_=0))
    rows = await session.execute(
        select(LightRow.group_id, func.count(), burning)
        .where(LightRow.group_id.in_(group_ids))
        .group_by(LightRow.group_id)
    )
    return {str(group_id): (int(count), int(on or 0)) for group_id, count, on in rows}


async def _count(session: AsyncSession, *where: Any) -> int:
    return int(await session.scalar(select(func.count()).where(*where)) or 0)


# -- the service ------------------------------------------------------------------------------------


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        areas: AreaRegistry,
        settings: StreetlightsSettings | None = None,
    ) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.areas = areas
        self.settings = settings or StreetlightsSettings()

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    async def _reach(
        session: AsyncSession,
        model: type[R],
        resource_id: str,
        kind: str,
        name: str,
        access: Access = Access.READ,
        *,
        lock: bool = False,
    ) -> R:
        """The row, when the caller reaches it (`access`); NOT_FOUND naming `name` otherwise."""
        row = await session.get(model, resource_id, with_for_update=lock)
        if row is None or not can_reach(row, current_call().principal, access):
            raise not_found(kind, name)
        return row

    @staticmethod
    async def _feeder(
        session: AsyncSession, feeder_id: str, name: str, access: Access = Access.READ, *, lock: bool = False
    ) -> tuple[FeederRow, CabinetRow]:
        """A feeder and its cabinet, when the caller reaches the cabinet."""
        feeder = await session.get(FeederRow, feeder_id, with_for_update=lock)
        cabinet = await session.get(CabinetRow, feeder.cabinet_id) if feeder is not None else None
        if feeder is None or cabinet is None or not can_reach(cabinet, current_call().principal, access):
            raise not_found("feeder", name)
        return feeder, cabinet

    @staticmethod
    async def _device_free(
        session: AsyncSession,
        column: InstrumentedAttribute[str | None],
        key: InstrumentedAttribute[str],
        device: str,
        own_id: str,
        what: str,
    ) -> None:
        """A controller is bound to one light, or one cabinet."""
        if not device:
            return
        taken = await session.scalar(select(key).where(column == device.partition("/")[2]))
        if taken is not None and taken != own_id:
            # Which one holds it is its owner's business: name none.
            raise AlreadyExists(f"{device} is bound to another {what}", reason="DEVICE_BOUND")

    async def _circuit_free(
        self, session: AsyncSession, cabinet_id: str, circuit: int, feeder_id: str
    ) -> None:
        taken = await session.scalar(
            select(FeederRow.feeder_id).where(
                FeederRow.cabinet_id == cabinet_id, FeederRow.circuit == circuit
            )
        )
        if taken is not None and taken != feeder_id:
            raise AlreadyExists(
                f"circuit {circuit} of cabinets/{cabinet_id} already has a feeder",
                reason="CIRCUIT_TAKEN",
                metadata={
                    "cabinet": f"cabinets/{cabinet_id}",
                    "circuit": str(circuit),
                    "feeder": f"feeders/{taken}",
                },
            )

    async def _group_for_light(self, session: AsyncSession, group: str, light_owner: str) -> GroupRow:
        row = await self._reach(session, GroupRow, ref_id(group) or "", "group", group)
        if row.owner_organization != light_owner and not is_city_wide(current_call().principal):
            raise FailedPrecondition(
                f"{group} belongs to another owner than the light; a light joins its own owner's groups",
                reason="GROUP_OF_ANOTHER_OWNER",
                metadata={"group": group},
            )
        return row

    def _area(self, spec: str, problems: Violations) -> tuple[Area | None, str]:
        """The area of a list filter, or an exact `h3:<cell>`; a malformed spec becomes a problem."""
        if not spec:
            return None, ""
        if spec.startswith("h3:"):
            cell = spec.removeprefix("h3:")
            valid = False
            try:
                valid = bool(h3.is_valid_cell(cell)) and h3.get_resolution(cell) == AREA_CELL_RESOLUTION
            except (ValueError, TypeError):
                valid = False
            if not valid:
                problems.append(("area", f"h3:<cell> needs an H3 cell of resolution {AREA_CELL_RESOLUTION}"))
            return None, cell
        try:
            return self.areas.resolve(spec), ""
        except InvalidArgument as error:
            problems += [(violation.field, violation.description) for violation in error.violations]
            return None, ""

    async def _page(
        self,
        request: Message,
        statement: Select[Any],
        key: InstrumentedAttribute[str],
        size: int,
        keep: Callable[[Any], bool] | None = None,
    ) -> tuple[list[Any], str]:
        """A keyset page; with `keep` (a polygon), read on until the page is full of rows it keeps."""
        if keep is None:
            return await keyset_page(self.db, self.page_tokens, request, statement, key, size=size)
        caller = current_call().principal
        position = self.page_tokens.parse(
            getattr(request, "page_token", ""),
            subject=caller.subject,
            organization=caller.organization,
            request=request,
        )
        after = position["after"] if position else None
        page: list[Any] = []
        async with self.db.read() as session:
            while len(page) <= size:
                query = statement.order_by(key).limit(size + 1)
                if after is not None:
                    query = query.where(key > after)
                chunk = list((await session.scalars(query)).all())
                page += [row for row in chunk if keep(row)]
                if len(chunk) <= size:
                    break
                after = getattr(chunk[-1], key.key)
        if len(page) <= size:
            return page, ""
        page = page[:size]
        token = self.page_tokens.issue(
            subject=caller.subject,
            organization=caller.organization,
            request=request,
            position={"after": getattr(page[-1], key.key)},
        )
        return page, token

    @staticmethod
    def _set_ownership(row: OwnedMixin, ownership: resources_pb2.Ownership, paths: Sequence[str]) -> None:
        if "ownership.operator_organization" in paths:
            row.operator_organization = ownership.operator_organization
        if "ownership.maintainer_organization" in paths:
            row.maintainer_organization = ownership.maintainer_organization

    @staticmethod
    def _touch(row: Any, tx: Tx) -> None:
        row.etag = new_etag()
        row.update_time = tx.now

    # -- light models -------------------------------------------------------------------------------

    async def CreateLightModel(
        self, request: inv.CreateLightModelRequest, context: grpc.aio.ServicerContext
    ) -> inv.LightModel:
        model = request.light_model
        _check(light_model_problems(model, None), request.light_model_id, "light_model_id")
        owner = owner_for_new(current_call().principal, model.ownership.owner_organization)

        async def create(tx: Tx) -> inv.LightModel:
            if await tx.session.get(LightModelRow, request.light_model_id) is not None:
                raise AlreadyExists(
                    f"lightModels/{request.light_model_id} already exists", reason="LIGHT_MODEL_EXISTS"
                )
            row = LightModelRow(
                light_model_id=request.light_model_id,
                display_name=model.display_name,
                lamp_technology=model.lamp_technology,
                rated_power_w=model.rated_power_w,
                standby_power_w=model.standby_power_w,
                luminous_flux_lm=model.luminous_flux_lm,
                color_temperature_k=model.color_temperature_k,
                working_life_h=model.working_life_h,
                minimum_dim_level=model.minimum_dim_level,
                manufacturer=model.manufacturer,
                owner_organization=owner,
                operator_organization=model.ownership.operator_organization,
                maintainer_organization=model.ownership.maintainer_organization,
                etag=new_etag(),
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            created = light_model_to_proto(row)
            emit(tx, "light_model.created", created, subject=created.name, owner=owner)
            return created

        return await idempotent(self.db, request, inv.LightModel, create)

    async def GetLightModel(
        self, request: inv.GetLightModelRequest, context: grpc.aio.ServicerContext
    ) -> inv.LightModel:
        model_id = name_id(request.name, "lightModels")
        async with self.db.read() as session:
            row = await self._reach(session, LightModelRow, model_id, "light_model", request.name)
        return light_model_to_proto(row)

    async def ListLightModels(
        self, request: inv.ListLightModelsRequest, context: grpc.aio.ServicerContext
    ) -> inv.ListLightModelsResponse:
        size = page_size(request.page_size)
        statement = select(LightModelRow).where(visible_clause(LightModelRow, current_call().principal))
        rows, token = await self._page(request, statement, LightModelRow.light_model_id, size)
        return inv.ListLightModelsResponse(
            light_models=[light_model_to_proto(row) for row in rows], next_page_token=token
        )

    async def UpdateLightModel(
        self, request: inv.UpdateLightModelRequest, context: grpc.aio.ServicerContext
    ) -> inv.LightModel:
        model = request.light_model
        model_id = name_id(model.name, "lightModels", "light_model.name")
        paths = mask(request.update_mask.paths, LIGHT_MODEL_UPDATABLE)
        _check(light_model_problems(model, paths))
        async with self.db.transaction() as tx:
            row = await self._reach(
                tx.session, LightModelRow, model_id, "light_model", model.name, Access.WRITE, lock=True
            )
            check_etag(model.etag, row.etag)
            for field in LIGHT_MODEL_UPDATABLE - OWNERSHIP_UPDATABLE:
                if field in paths:
                    setattr(row, field, getattr(model, field))
            self._set_ownership(row, model.ownership, paths)
            self._touch(row, tx)
            updated = light_model_to_proto(row)
            emit(tx, "light_model.updated", updated, subject=updated.name, owner=row.owner_organization)
            return updated

    async def DeleteLightModel(
        self, request: inv.DeleteLightModelRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        model_id = name_id(request.name, "lightModels")
        async with self.db.transaction() as tx:
            row = await self._reach(
                tx.session, LightModelRow, model_id, "light_model", request.name, Access.WRITE, lock=True
            )
            lights = await _count(tx.session, LightRow.light_model_id == model_id)
            if lights:
                raise FailedPrecondition(
                    f"{request.name} is the model of {lights} light(s); give them another model first",
                    reason="MODEL_IN_USE",
                    metadata={"lights": str(lights)},
                )
            emit(
                tx,
                "light_model.deleted",
                light_model_to_proto(row),
                subject=request.name,
                owner=row.owner_organization,
            )
            await tx.session.delete(row)
        return empty_pb2.Empty()

    # -- cabinets -----------------------------------------------------------------------------------

    async def CreateCabinet(
        self, request: inv.CreateCabinetRequest, context: grpc.aio.ServicerContext
    ) -> inv.Cabinet:
        cabinet = request.cabinet
        _check(cabinet_problems(cabinet, None), request.cabinet_id, "cabinet_id")
        cell = cell_for(cabinet.location.latitude, cabinet.location.longitude, field="cabinet.location")
        owner = owner_for_new(current_call().principal, cabinet.ownership.owner_organization)

        async def create(tx: Tx) -> inv.Cabinet:
            if await tx.session.get(CabinetRow, request.cabinet_id) is not None:
                raise AlreadyExists(f"cabinets/{request.cabinet_id} already exists", reason="CABINET_EXISTS")
            await self._device_free(
                tx.session,
                CabinetRow.device_id,
                CabinetRow.cabinet_id,
                cabinet.device,
                request.cabinet_id,
                "cabinet",
            )
            row = CabinetRow(
                cabinet_id=request.cabinet_id,
                display_name=cabinet.display_name,
                working_mode=cabinet.working_mode,
                device_id=ref_id(cabinet.device),
                serial_number=cabinet.serial_number,
                maximum_power_w=cabinet.maximum_power_w,
                latitude=cabinet.location.latitude,
                longitude=cabinet.location.longitude,
                area_cell=cell,
                owner_organization=owner,
                operator_organization=cabinet.ownership.operator_organization,
                maintainer_organization=cabinet.ownership.maintainer_organization,
                etag=new_etag(),
                create_time=tx.now,
                update_time=tx.now,
            )
            clear_cabinet_state(row)
            tx.session.add(row)
            created = cabinet_to_proto(row)
            emit(tx, "cabinet.created", created, subject=created.name, owner=owner, cell=cell)
            return created

        return await idempotent(self.db, request, inv.Cabinet, create)

    async def GetCabinet(
        self, request: inv.GetCabinetRequest, context: grpc.aio.ServicerContext
    ) -> inv.Cabinet:
        cabinet_id = name_id(request.name, "cabinets")
        async with self.db.read() as session:
            row = await self._reach(session, CabinetRow, cabinet_id, "cabinet", request.name)
        return cabinet_to_proto(row)

    async def ListCabinets(
        self, request: inv.ListCabinetsRequest, context: grpc.aio.ServicerContext
    ) -> inv.ListCabinetsResponse:
        size = page_size(request.page_size)
        problems: Violations = []
        area, cell = self._area(request.area, problems)
        _check(problems)
        statement = select(CabinetRow).where(visible_clause(CabinetRow, current_call().principal))
        if cell:
            statement = statement.where(CabinetRow.area_cell == cell)
        if area is not None:  # cells select candidates; the polygon decides
            statement = statement.where(CabinetRow.area_cell.in_(sorted(area.cells)))
        keep = (lambda row: area.contains(row.latitude, row.longitude)) if area is not None else None
        rows, token = await self._page(request, statement, CabinetRow.cabinet_id, size, keep)
        return inv.ListCabinetsResponse(
            cabinets=[cabinet_to_proto(row) for row in rows], next_page_token=token
        )

    async def UpdateCabinet(
        self, request: inv.UpdateCabinetRequest, context: grpc.aio.ServicerContext
    ) -> inv.Cabinet:
        cabinet = request.cabinet
        cabinet_id = name_id(cabinet.name, "cabinets", "cabinet.name")
        paths = mask(request.update_mask.paths, CABINET_UPDATABLE)
        _check(cabinet_problems(cabinet, paths))
        async with self.db.transaction() as tx:
            row = await self._reach(
                tx.session, CabinetRow, cabinet_id, "cabinet", cabinet.name, Access.WRITE, lock=True
            )
            check_etag(cabinet.etag, row.etag)
            if "device" in paths:
                await self._device_free(
                    tx.session,
                    CabinetRow.device_id,
                    CabinetRow.cabinet_id,
                    cabinet.device,
                    cabinet_id,
                    "cabinet",
                )
                device_id = ref_id(cabinet.device)
                if device_id != row.device_id:
                    row.device_id = device_id
                    clear_cabinet_state(row)
            if "location" in paths:
                row.area_cell = cell_for(
                    cabinet.location.latitude, cabinet.location.longitude, field="cabinet.location"
                )
                row.latitude, row.longitude = cabinet.location.latitude, cabinet.location.longitude
            for field in ("display_name", "working_mode", "serial_number", "maximum_power_w"):
                if field in paths:
                    setattr(row, field, getattr(cabinet, field))
            self._set_ownership(row, cabinet.ownership, paths)
            self._touch(row, tx)
            updated = cabinet_to_proto(row)
            emit(
                tx,
                "cabinet.updated",
                updated,
                subject=updated.name,
                owner=row.owner_organization,
                cell=row.area_cell,
            )
            return updated

    async def DeleteCabinet(
        self, request: inv.DeleteCabinetRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        cabinet_id = name_id(request.name, "cabinets")
        async with self.db.transaction() as tx:
            row = await self._reach(
                tx.session, CabinetRow, cabinet_id, "cabinet", request.name, Access.WRITE, lock=True
            )
            feeders = await _count(tx.session, FeederRow.cabinet_id == cabinet_id)
            groups = await _count(tx.session, GroupRow.cabinet_id == cabinet_id)
            if feeders or groups:
                raise FailedPrecondition(
                    f"{request.name} has {feeders} feeder(s) and supplies {groups} group(s); delete or move "
                    "them first",
                    reason="CABINET_IN_USE",
                    metadata={"feeders": str(feeders), "groups": str(groups)},
                )
            emit(
                tx,
                "cabinet.deleted",
                cabinet_to_proto(row),
                subject=request.name,
                owner=row.owner_organization,
                cell=row.area_cell,
            )
            await tx.session.delete(row)
        return empty_pb2.Empty()

    # -- feeders ------------------------------------------------------------------------------------

    async def CreateFeeder(
        self, request: inv.CreateFeederRequest, context: grpc.aio.ServicerContext
    ) -> inv.Feeder:
        feeder = request.feeder
        _check(feeder_problems(feeder, None), request.feeder_id, "feeder_id")

        async def create(tx: Tx) -> inv.Feeder:
            if await tx.session.get(FeederRow, request.feeder_id) is not None:
                raise AlreadyExists(f"feeders/{request.feeder_id} already exists", reason="FEEDER_EXISTS")
            cabinet = await self._reach(
                tx.session,
                CabinetRow,
                ref_id(feeder.cabinet) or "",
                "cabinet",
                feeder.cabinet,
                Access.WRITE,
                lock=True,
            )
            await self._circuit_free(tx.session, cabinet.cabinet_id, feeder.circuit, request.feeder_id)
            row = FeederRow(
                feeder_id=request.feeder_id,
                display_name=feeder.display_name,
                cabinet_id=cabinet.cabinet_id,
                circuit=feeder.circuit,
                phase=feeder.phase,
                energized=feeder_energized(
                    cabinet, feeder.circuit, feeder.phase, self.settings.outage_voltage_v
                ),
                etag=new_etag(),
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            created = feeder_to_proto(row, cabinet, 0)
            emit(
                tx,
                "feeder.created",
                created,
                subject=created.name,
                owner=cabinet.owner_organization,
                cell=cabinet.area_cell,
            )
            return created

        return await idempotent(self.db, request, inv.Feeder, create)

    async def GetFeeder(self, request: inv.GetFeederRequest, context: grpc.aio.ServicerContext) -> inv.Feeder:
        feeder_id = name_id(request.name, "feeders")
        async with self.db.read() as session:
            row, cabinet = await self._feeder(session, feeder_id, request.name)
            counts = await feeder_light_counts(session, [feeder_id])
        return feeder_to_proto(row, cabinet, counts.get(feeder_id, 0))

    async def ListFeeders(
        self, request: inv.ListFeedersRequest, context: grpc.aio.ServicerContext
    ) -> inv.ListFeedersResponse:
        size = page_size(request.page_size)
        _check(reference_problem(request.cabinet, "cabinets", "cabinet"))
        statement = (
            select(FeederRow)
            .join(CabinetRow, CabinetRow.cabinet_id == FeederRow.cabinet_id)
            .where(visible_clause(CabinetRow, current_call().principal))
        )
        if request.cabinet:
            statement = statement.where(FeederRow.cabinet_id == ref_id(request.cabinet))
        rows, token = await self._page(request, statement, FeederRow.feeder_id, size)
        async with self.db.read() as session:
            cabinet_ids = sorted({row.cabinet_id for row in rows})
            cabinets = {
                cabinet.cabinet_id: cabinet
                for cabinet in (
                    await session.scalars(select(CabinetRow).where(CabinetRow.cabinet_id.in_(cabinet_ids)))
                ).all()
            }
            counts = await feeder_light_counts(session, [row.feeder_id for row in rows])
        return inv.ListFeedersResponse(
            feeders=[
                feeder_to_proto(row, cabinets[row.cabinet_id], counts.get(row.feeder_id, 0))
                for row in rows
                if row.cabinet_id in cabinets  # a feeder moved between the two reads is left out
            ],
            next_page_token=token,
        )

    async def UpdateFeeder(
        self, request: inv.UpdateFeederRequest, context: grpc.aio.ServicerContext
    ) -> inv.Feeder:
        feeder = request.feeder
        feeder_id = name_id(feeder.name, "feeders", "feeder.name")
        paths = mask(request.update_mask.paths, FEEDER_UPDATABLE)
        _check(feeder_problems(feeder, paths))
        async with self.db.transaction() as tx:
            row, cabinet = await self._feeder(tx.session, feeder_id, feeder.name, Access.WRITE, lock=True)
            check_etag(feeder.etag, row.etag)
            # Where it goes is checked before anything changes (a query would flush a half-made change).
            if "cabinet" in paths and ref_id(feeder.cabinet) != row.cabinet_id:
                cabinet = await self._reach(
                    tx.session,
                    CabinetRow,
                    ref_id(feeder.cabinet) or "",
                    "cabinet",
                    feeder.cabinet,
                    Access.WRITE,
                    lock=True,
                )
            circuit = feeder.circuit if "circuit" in paths else row.circuit
            if (cabinet.cabinet_id, circuit) != (row.cabinet_id, row.circuit):
                await self._circuit_free(tx.session, cabinet.cabinet_id, circuit, feeder_id)
            moved = cabinet.cabinet_id != row.cabinet_id
            row.cabinet_id, row.circuit = cabinet.cabinet_id, circuit
            if moved:  # the lights on it now hang on the other cabinet
                await tx.session.execute(
                    update(LightRow)
                    .where(LightRow.feeder_id == feeder_id)
                    .values(cabinet_id=cabinet.cabinet_id)
                )
            if "phase" in paths:
                row.phase = feeder.phase
            if "display_name" in paths:
                row.display_name = feeder.display_name
            if {"cabinet", "circuit", "phase"} & set(paths):
                row.energized = feeder_energized(
                    cabinet, row.circuit, row.phase, self.settings.outage_voltage_v
                )
            self._touch(row, tx)
            counts = await feeder_light_counts(tx.session, [feeder_id])
            updated = feeder_to_proto(row, cabinet, counts.get(feeder_id, 0))
            emit(
                tx,
                "feeder.updated",
                updated,
                subject=updated.name,
                owner=cabinet.owner_organization,
                cell=cabinet.area_cell,
            )
            return updated

    async def DeleteFeeder(
        self, request: inv.DeleteFeederRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        feeder_id = name_id(request.name, "feeders")
        async with self.db.transaction() as tx:
            row, cabinet = await self._feeder(tx.session, feeder_id, request.name, Access.WRITE, lock=True)
            lights = await _count(tx.session, LightRow.feeder_id == feeder_id)
            if lights:
                raise FailedPrecondition(
                    f"{lights} light(s) hang on {request.name}; move them to another feeder first",
                    reason="FEEDER_IN_USE",
                    metadata={"lights": str(lights)},
                )
            emit(
                tx,
                "feeder.deleted",
                feeder_to_proto(row, cabinet, 0),
                subject=request.name,
                owner=cabinet.owner_organization,
                cell=cabinet.area_cell,
            )
            await tx.session.delete(row)
        return empty_pb2.Empty()

    # -- groups -------------------------------------------------------------------------------------

    async def _group_references(
        self, session: AsyncSession, group: inv.Group, paths: Sequence[str] | None
    ) -> None:
        """The cabinet and the schedule a group names exist and are the caller's to see."""
        if (paths is None or "cabinet" in paths) and group.cabinet:
            await self._reach(session, CabinetRow, ref_id(group.cabinet) or "", "cabinet", group.cabinet)
        if (paths is None or "schedule" in paths) and group.schedule:
            await self._reach(session, ScheduleRow, ref_id(group.schedule) or "", "schedule", group.schedule)

    async def CreateGroup(
        self, request: inv.CreateGroupRequest, context: grpc.aio.ServicerContext
    ) -> inv.Group:
        group = request.group
        _check(group_problems(group, None), request.group_id, "group_id")
        owner = owner_for_new(current_call().principal, group.ownership.owner_organization)

        async def create(tx: Tx) -> inv.Group:
            if await tx.session.get(GroupRow, request.group_id) is not None:
                raise AlreadyExists(f"groups/{request.group_id} already exists", reason="GROUP_EXISTS")
            await self._group_references(tx.session, group, None)
            row = GroupRow(
                group_id=request.group_id,
                display_name=group.display_name,
                description=group.description,
                cabinet_id=ref_id(group.cabinet),
                schedule_id=ref_id(group.schedule),
                owner_organization=owner,
                operator_organization=group.ownership.operator_organization,
                maintainer_organization=group.ownership.maintainer_organization,
                etag=new_etag(),
                create_time=tx.now,
                update_time=tx.now,
            )
            tx.session.add(row)
            created = group_to_proto(row, 0, 0)
            emit(tx, "group.created", created, subject=created.name, owner=owner)
            return created

        return await idempotent(self.db, request, inv.Group, create)

    async def GetGroup(self, request: inv.GetGroupRequest, context: grpc.aio.ServicerContext) -> inv.Group:
        group_id = name_id(request.name, "groups")
        async with self.db.read() as session:
            row = await self._reach(session, GroupRow, group_id, "group", request.name)
            counts = await group_light_counts(session, [group_id])
        return group_to_proto(row, *counts.get(group_id, (0, 0)))

    async def ListGroups(
        self, request: inv.ListGroupsRequest, context: grpc.aio.ServicerContext
    ) -> inv.ListGroupsResponse:
        size = page_size(request.page_size)
        _check(reference_problem(request.schedule, "schedules", "schedule"))
        statement = select(GroupRow).where(visible_clause(GroupRow, current_call().principal))
        if request.schedule:
            statement = statement.where(GroupRow.schedule_id == ref_id(request.schedule))
        rows, token = await self._page(request, statement, GroupRow.group_id, size)
        async with self.db.read() as session:
            counts = await group_light_counts(session, [row.group_id for row in rows])
        return inv.ListGroupsResponse(
            groups=[group_to_proto(row, *counts.get(row.group_id, (0, 0))) for row in rows],
            next_page_token=token,
        )

    async def UpdateGroup(
        self, request: inv.UpdateGroupRequest, context: grpc.aio.ServicerContext
    ) -> inv.Group:
        group = request.group
        group_id = name_id(group.name, "groups", "group.name")
        paths = mask(request.update_mask.paths, GROUP_UPDATABLE)
        _check(group_problems(group, paths))
        async with self.db.transaction() as tx:
            row = await self._reach(
                tx.session, GroupRow, group_id, "group", group.name, Access.WRITE, lock=True
            )
            check_etag(group.etag, row.etag)
            await self._group_references(tx.session, group, paths)
            if "cabinet" in paths:
                row.cabinet_id = ref_id(group.cabinet)
            if "schedule" in paths:
                # Only stored: the schedule applier brings the group's lights to it on its next round.
                row.schedule_id = ref_id(group.schedule)
            for field in ("display_name", "description"):
                if field in paths:
                    setattr(row, field, getattr(group, field))
            self._set_ownership(row, group.ownership, paths)
            self._touch(row, tx)
            counts = await group_light_counts(tx.session, [group_id])
            updated = group_to_proto(row, *counts.get(group_id, (0, 0)))
            emit(tx, "group.updated", updated, subject=updated.name, owner=row.owner_organization)
            return updated

    async def DeleteGroup(
        self, request: inv.DeleteGroupRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        group_id = name_id(request.name, "groups")
        async with self.db.transaction() as tx:
            row = await self._reach(
                tx.session, GroupRow, group_id, "group", request.name, Access.WRITE, lock=True
            )
            lights = await _count(tx.session, LightRow.group_id == group_id)
            if lights:
                raise FailedPrecondition(
                    f"{request.name} has {lights} light(s); move them to another group first",
                    reason="GROUP_IN_USE",
                    metadata={"lights": str(lights)},
                )
            emit(
                tx,
                "group.deleted",
                group_to_proto(row, 0, 0),
                subject=request.name,
                owner=row.owner_organization,
            )
            await tx.session.delete(row)
        return empty_pb2.Empty()

    # -- lights -------------------------------------------------------------------------------------

    async def CreateLight(
        self, request: inv.CreateLightRequest, context: grpc.aio.ServicerContext
    ) -> inv.Light:
        light = request.light
        _check(light_problems(light, None), request.light_id, "light_id")
        cell = cell_for(light.location.latitude, light.location.longitude, field="light.location")
        owner = owner_for_new(current_call().principal, light.ownership.owner_organization)

        async def create(tx: Tx) -> inv.Light:
            session = tx.session
            if await session.get(LightRow, request.light_id) is not None:
                raise AlreadyExists(f"lights/{request.light_id} already exists", reason="LIGHT_EXISTS")
            model = await self._reach(
                session, LightModelRow, ref_id(light.model) or "", "light_model", light.model
            )
            cabinet_id = None
            if light.feeder:
                feeder, _ = await self._feeder(session, ref_id(light.feeder) or "", light.feeder)
                cabinet_id = feeder.cabinet_id
            if light.group:
                await self._group_for_light(session, light.group, owner)
            await self._device_free(
                session, LightRow.device_id, LightRow.light_id, light.device, request.light_id, "light"
            )
            row = LightRow(
                light_id=request.light_id,
                display_name=light.display_name,
                light_model_id=model.light_model_id,
                feeder_id=ref_id(light.feeder),
                cabinet_id=cabinet_id,
                group_id=ref_id(light.group),
                device_id=ref_id(light.device),
                pole_number=light.pole_number,
                street=light.street,
                location_category=light.location_category,
                lantern_height_m=light.lantern_height_m,
                last_lamp_change_time=(
                    light.last_lamp_change_time.ToDatetime(tzinfo=UTC)
                    if light.HasField("last_lamp_change_time")
                    else None
                ),
                reported_status=light.reported_status,
                heartbeat_timeout_s=_heartbeat_s(light),
                latitude=light.location.latitude,
                longitude=light.location.longitude,
                area_cell=cell,
                owner_organization=owner,
                operator_organization=light.ownership.operator_organization,
                maintainer_organization=light.ownership.maintainer_organization,
                desired_level=None,
                desired_source=inv.CONTROL_SOURCE_UNSPECIFIED,
                desired_schedule_id=None,
                desired_step=None,
                desired_since=None,
                next_change_time=None,
                override_control_id=None,
                override_until=None,
                etag=new_etag(),
                create_time=tx.now,
                update_time=tx.now,
            )
            clear_light_state(row)
            session.add(row)
            created = light_to_proto(row, [])
            emit(tx, "light.created", created, subject=created.name, owner=owner, cell=cell)
            return created

        return await idempotent(self.db, request, inv.Light, create)

    async def GetLight(self, request: inv.GetLightRequest, context: grpc.aio.ServicerContext) -> inv.Light:
        light_id = name_id(request.name, "lights")
        async with self.db.read() as session:
            row = await self._reach(session, LightRow, light_id, "light", request.name)
            kinds = await open_fault_kinds(session, [light_id])
        return light_to_proto(row, kinds[light_id])

    async def ListLights(
        self, request: inv.ListLightsRequest, context: grpc.aio.ServicerContext
    ) -> inv.ListLightsResponse:
        size = page_size(request.page_size)
        problems: Violations = [
            *reference_problem(request.group, "groups", "group"),
            *reference_problem(request.cabinet, "cabinets", "cabinet"),
            *reference_problem(request.feeder, "feeders", "feeder"),
        ]
        if len(request.street) > 200:
            problems.append(("street", "at most 200 characters"))
        area, cell = self._area(request.area, problems)
        _check(problems)
        statement = select(LightRow).where(visible_clause(LightRow, current_call().principal))
        if request.group:
            statement = statement.where(LightRow.group_id == ref_id(request.group))
        if request.cabinet:
            statement = statement.where(LightRow.cabinet_id == ref_id(request.cabinet))
        if request.feeder:
            statement = statement.where(LightRow.feeder_id == ref_id(request.feeder))
        if request.street:
            statement = statement.where(LightRow.street == request.street)
        if request.faulty_only:
            statement = statement.where(
                literal("lights/")
                .concat(LightRow.light_id)
                .in_(select(FaultRow.subject).where(FaultRow.state != FAULT_CLEARED))
            )
        if cell:
            statement = statement.where(LightRow.area_cell == cell)
        if area is not None:  # cells select candidates; the polygon decides
            statement = statement.where(LightRow.area_cell.in_(sorted(area.cells)))
        keep = (lambda row: area.contains(row.latitude, row.longitude)) if area is not None else None
        rows, token = await self._page(request, statement, LightRow.light_id, size, keep)
        async with self.db.read() as session:
            kinds = await open_fault_kinds(session, [row.light_id for row in rows])
        return inv.ListLightsResponse(
            lights=[light_to_proto(row, kinds[row.light_id]) for row in rows], next_page_token=token
        )

    async def UpdateLight(
        self, request: inv.UpdateLightRequest, context: grpc.aio.ServicerContext
    ) -> inv.Light:
        light = request.light
        light_id = name_id(light.name, "lights", "light.name")
        paths = mask(request.update_mask.paths, LIGHT_UPDATABLE)
        _check(light_problems(light, paths))
        async with self.db.transaction() as tx:
            session = tx.session
            row = await self._reach(session, LightRow, light_id, "light", light.name, Access.WRITE, lock=True)
            check_etag(light.etag, row.etag)
            if "model" in paths:
                model = await self._reach(
                    session, LightModelRow, ref_id(light.model) or "", "light_model", light.model
                )
                row.light_model_id = model.light_model_id
            if "feeder" in paths:
                cabinet_id = None
                if light.feeder:
                    feeder, _ = await self._feeder(session, ref_id(light.feeder) or "", light.feeder)
                    cabinet_id = feeder.cabinet_id
                row.feeder_id, row.cabinet_id = ref_id(light.feeder), cabinet_id
            if "group" in paths:
                if light.group:
                    await self._group_for_light(session, light.group, row.owner_organization)
                row.group_id = ref_id(light.group)
            if "device" in paths:
                await self._device_free(
                    session, LightRow.device_id, LightRow.light_id, light.device, light_id, "light"
                )
                device_id = ref_id(light.device)
                if device_id != row.device_id:
                    row.device_id = device_id
                    clear_light_state(row)
            if "location" in paths:
                row.area_cell = cell_for(
                    light.location.latitude, light.location.longitude, field="light.location"
                )
                row.latitude, row.longitude = light.location.latitude, light.location.longitude
            for field in (
                "display_name",
                "pole_number",
                "street",
                "location_category",
                "lantern_height_m",
                "reported_status",
            ):
                if field in paths:
                    setattr(row, field, getattr(light, field))
            if "last_lamp_change_time" in paths:
                row.last_lamp_change_time = (
                    light.last_lamp_change_time.ToDatetime(tzinfo=UTC)
                    if light.HasField("last_lamp_change_time")
                    else None
                )
            if "heartbeat_timeout" in paths:
                row.heartbeat_timeout_s = _heartbeat_s(light)
            self._set_ownership(row, light.ownership, paths)
            self._touch(row, tx)
            kinds = await open_fault_kinds(session, [light_id])
            updated = light_to_proto(row, kinds[light_id])
            emit(
                tx,
                "light.updated",
                updated,
                subject=updated.name,
                owner=row.owner_organization,
                cell=row.area_cell,
            )
            return updated

    async def DeleteLight(
        self, request: inv.DeleteLightRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        light_id = name_id(request.name, "lights")
        async with self.db.transaction() as tx:
            row = await self._reach(
                tx.session, LightRow, light_id, "light", request.name, Access.WRITE, lock=True
            )
            kinds = (await open_fault_kinds(tx.session, [light_id]))[light_id]
            if kinds:
                raise FailedPrecondition(
                    f"{request.name} has open faults ({', '.join(map(fault_kind_name, kinds))}); clear them "
                    "first",
                    reason="LIGHT_HAS_OPEN_FAULTS",
                    metadata={"open_faults": str(len(kinds))},
                )
            # Its hourly energy rows stay: the group and cabinet totals of the past are made of them.
            emit(
                tx,
                "light.deleted",
                light_to_proto(row, []),
                subject=request.name,
                owner=row.owner_organization,
                cell=row.area_cell,
            )
            await tx.session.delete(row)
        return empty_pb2.Empty()
