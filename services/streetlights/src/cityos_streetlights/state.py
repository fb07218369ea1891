"""Lights' and cabinets' live state and faults from their controllers' readings, and the heartbeat sweep.

`rules` decides; this module stores what it decided, in the transaction that applies the reading.

A light controller's reading (`apply_light_reading`):

- any record is a sign of life: `heard_time` becomes its `received_time` if later;
- a reading measured (`time`) no later than the light's `reading_time` is late (a retransmission, a
  gateway flushing its buffer): it changes nothing else;
- otherwise: a FEEDER_OUTAGE of its feeder that was inferred from silence clears (the light talks, so
  the feeder is live); the energy of the interval since the previous reading is metered
  (`energy.meter`, before the live columns change, with what this reading carries); the reported
  values become the light's live state (what it leaves out keeps its value; `on` and `dim_level` make
  `power_state`: OFF, ON at 100 %, LOW below; the flags add and remove `controller_faults`);
  `heartbeat_missed` turns false and an open CONTROLLER_OFFLINE clears; and `rules.evaluate_light`
  decides which of LAMP_FAILURE, DAY_BURNER, LAMP_OUT, POWER_ANOMALY, RELAY_FAILURE hold: those are
  raised (or updated) and the others cleared. Under an outage of its cabinet or feeder the light gets
  none of the symptoms (LAMP_OUT, LAMP_FAILURE, POWER_ANOMALY, CONTROLLER_OFFLINE); an open one is
  cleared as "folded into faults/<outage>".

A cabinet controller's reading (`apply_cabinet_reading`): heard and late as above; the values become the
cabinet's live state (`circuit_<n>` into `circuits`); then

- every phase it reports below `outage_voltage_v` → `outage`, every feeder de-energized and ONE
  CABINET_OUTAGE fault (subject `cabinets/{id}`, affected: every light whose cabinet it is), raised with
  `streetlights.cabinet.offline`; the open symptoms of those lights are folded into it. Mains back → it
  clears;
- otherwise each feeder whose breaker is open or whose phase is dead (`rules.feeder_dead`) is
  de-energized with ONE FEEDER_OUTAGE (subject `feeders/{id}`, affected: its lights) and
  `streetlights.feeder.offline`, folding its lights' symptoms the same way (an outage inferred from
  silence becomes this reported one); live again → the reported outage clears. While the cabinet is
  out, its feeders' outages stay as they are.

A reading does not change `etag` or `update_time`: those version the configuration.

The heartbeat sweep (`Heartbeat.tick()`, every `heartbeat_check_interval_s`, with the database's clock):

- cabinets silent past `cabinet_heartbeat_timeout_s` get `heartbeat_missed` (heard again: cleared);
- lights silent past their `heartbeat_timeout_s` get `heartbeat_missed` and a CONTROLLER_OFFLINE fault,
  unless an outage covers them. When every light of a feeder that has been heard (at least 2) is silent
  and no cabinet reading explains it, the root cause is the feeder: ONE FEEDER_OUTAGE ("inferred: every
  light on it is silent") instead of a CONTROLLER_OFFLINE per lamp (those already open are folded into
  it). A light of it heard again clears it (and so does the sweep once the feeder is not all silent);
- hourly energy buckets older than `energy_retention_days` are deleted.

Locks: every writer here takes the rows it changes in one order — cabinets, then feeders, then lights,
each sorted by id, with `SELECT … FOR UPDATE` — so the feed follower and the sweep never deadlock (the
sweep skips rows locked by someone else: a light being updated is being heard).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select

from cityos.streetlights.v1 import inventory_pb2
from cityos_platform.db import Database, Tx
from cityos_platform.tasks import PeriodicTask
from cityos_streetlights import energy, rules
from cityos_streetlights.fault_rows import CLEARED, FaultBook, folded_detail
from cityos_streetlights.models import CabinetRow, EnergyHourRow, FaultRow, FeederRow, LightModelRow, LightRow
from cityos_streetlights.settings import StreetlightsSettings

log = logging.getLogger(__name__)

POWER_ON = int(inventory_pb2.POWER_STATE_ON)
POWER_OFF = int(inventory_pb2.POWER_STATE_OFF)
POWER_LOW = int(inventory_pb2.POWER_STATE_LOW)
BURNING_STATES = frozenset({POWER_ON, POWER_LOW, int(inventory_pb2.POWER_STATE_BOOTING_UP)})
HEARTBEAT_BATCH = 500
LIVE_VALUES = (
    "dim_level",
    "power_w",
    "voltage_v",
    "current_a",
    "power_factor",
    "energy_wh",
    "operating_hours",
    "switch_count",
)


@dataclass(frozen=True, slots=True)
class LightMeasured:
    """One reading of a light controller (None: not in it). `flags`: the ControllerFault values it
    reports on (True) or off (False)."""

    time: datetime
    received: datetime
    on: bool | None = None
    dim_level: float | None = None
    power_w: float | None = None
    voltage_v: float | None = None
    current_a: float | None = None
    power_factor: float | None = None
    energy_wh: float | None = None
    operating_hours: float | None = None
    switch_count: float | None = None
    flags: Mapping[int, bool] = field(default_factory=dict)
    day_burner: bool | None = None


@dataclass(frozen=True, slots=True)
class CabinetMeasured:
    """One reading of a cabinet controller (None: not in it). `circuits`: breaker by circuit number."""

    time: datetime
    received: datetime
    voltages: tuple[float | None, float | None, float | None] = (None, None, None)
    active_power_w: float | None = None
    energy_wh: float | None = None
    power_factor: float | None = None
    door_open: bool | None = None
    circuits: Mapping[int, bool] = field(default_factory=dict)


# -- small pieces --------------------------------------------------------------------------------------


def power_state(on: bool, dim_level: float | None) -> int:
    if not on:
        return POWER_OFF
    return POWER_ON if dim_level is None or dim_level >= 100 else POWER_LOW


def is_on(row: LightRow) -> bool | None:
    """The light's `on` as its power state says (None: never reported)."""
    if row.power_state in BURNING_STATES:
        return True
    return False if row.power_state == POWER_OFF else None


def in_force_of(row: LightRow) -> rules.InForce:
    return rules.InForce(level=row.desired_level, source=row.desired_source, since=row.desired_since)


def lamp_of(model: LightModelRow) -> rules.LampModel:
    return rules.LampModel(model.rated_power_w, model.standby_power_w, model.minimum_dim_level)


def is_inferred(fault: FaultRow) -> bool:
    """A FEEDER_OUTAGE inferred from silence (not reported by the cabinet)."""
    return fault.kind == rules.FEEDER_OUTAGE and fault.detail == rules.INFERRED


def covering_outage(book: FaultBook, light: LightRow) -> FaultRow | None:
    """The open outage of the light's cabinet or feeder, if any (their subjects must be loaded)."""
    if light.cabinet_id:
        outage = book.get(f"cabinets/{light.cabinet_id}", rules.CABINET_OUTAGE)
        if outage is not None:
            return outage
    if light.feeder_id:
        return book.get(f"feeders/{light.feeder_id}", rules.FEEDER_OUTAGE)
    return None


def light_subjects(lights: Iterable[LightRow]) -> set[str]:
    """The subjects whose faults decide about the lights: theirs, their feeders', their cabinets'."""
    subjects: set[str] = set()
    for light in lights:
        subjects.add(f"lights/{light.light_id}")
        if light.feeder_id:
            subjects.add(f"feeders/{light.feeder_id}")
        if light.cabinet_id:
            subjects.add(f"cabinets/{light.cabinet_id}")
    return subjects


class Scope:
    """What applying a batch of readings needs in one transaction: the locked cabinets, feeders and
    lights, the lights' models, and the open faults of all of them (`book`)."""

    def __init__(self, tx: Tx, limits: rules.Limits) -> None:
        self.tx = tx
        self.limits = limits
        self.book = FaultBook(tx)
        self.models: dict[str, LightModelRow] = {}
        self.light_by_device: dict[str, LightRow] = {}
        self.cabinet_by_device: dict[str, CabinetRow] = {}
        self.feeders_of_cabinet: dict[str, list[FeederRow]] = defaultdict(list)
        self.lights_of_cabinet: dict[str, list[LightRow]] = defaultdict(list)
        self.lights_of_feeder: dict[str, list[LightRow]] = defaultdict(list)

    @classmethod
    async def lock(
        cls,
        tx: Tx,
        limits: rules.Limits,
        *,
        controllers: Iterable[str],
        cabinet_controllers: Iterable[str],
    ) -> Scope:
        """Lock, in this order, the cabinets watching `cabinet_controllers`, their feeders, and the
        lights watching `controllers` or fed by those cabinets (each sorted by id), and load the rest."""
        scope = cls(tx, limits)
        session = tx.session
        cabinets = list(
            (
                await session.scalars(
                    select(CabinetRow)
                    .where(CabinetRow.device_id.in_(sorted(cabinet_controllers)))
                    .order_by(CabinetRow.cabinet_id)
                    .with_for_update()
                )
            ).all()
        )
        cabinet_ids = [cabinet.cabinet_id for cabinet in cabinets]
        feeders: list[FeederRow] = []
        if cabinet_ids:
            feeders = list(
                (
                    await session.scalars(
                        select(FeederRow)
                        .where(FeederRow.cabinet_id.in_(cabinet_ids))
                        .order_by(FeederRow.feeder_id)
                        .with_for_update()
                    )
                ).all()
            )
        watched = or_(
            LightRow.device_id.in_(sorted(controllers)),
            LightRow.cabinet_id.in_(cabinet_ids),
            LightRow.feeder_id.in_([feeder.feeder_id for feeder in feeders]),
        )
        lights = list(
            (
                await session.scalars(
                    select(LightRow).where(watched).order_by(LightRow.light_id).with_for_update()
                )
            ).all()
        )
        for cabinet in cabinets:
            if cabinet.device_id:
                scope.cabinet_by_device[cabinet.device_id] = cabinet
        for feeder in feeders:
            scope.feeders_of_cabinet[feeder.cabinet_id].append(feeder)
        for light in lights:
            if light.device_id:
                scope.light_by_device[light.device_id] = light
            if light.cabinet_id:
                scope.lights_of_cabinet[light.cabinet_id].append(light)
            if light.feeder_id:
                scope.lights_of_feeder[light.feeder_id].append(light)
        model_ids = sorted({light.light_model_id for light in lights})
        if model_ids:
            scope.models = {
                model.light_model_id: model
                for model in await session.scalars(
                    select(LightModelRow).where(LightModelRow.light_model_id.in_(model_ids))
                )
            }
        subjects = light_subjects(lights)
        subjects.update(f"cabinets/{cabinet_id}" for cabinet_id in cabinet_ids)
        subjects.update(f"feeders/{feeder.feeder_id}" for feeder in feeders)
        await scope.book.load(subjects)
        return scope


# -- light readings ------------------------------------------------------------------------------------


async def apply_light_reading(scope: Scope, row: LightRow, measured: LightMeasured) -> bool:
    """One reading of the light's controller (see the module docstring); whether it was fresh."""
    if row.heard_time is None or measured.received > row.heard_time:
        row.heard_time = measured.received
    if row.reading_time is not None and measured.time <= row.reading_time:
        log.debug(
            "late reading of light %s (measured %s, its state is from %s): only heard",
            row.light_id,
            measured.time.isoformat(),
            row.reading_time.isoformat(),
        )
        return False
    book, limits = scope.book, scope.limits
    subject = f"lights/{row.light_id}"
    if row.feeder_id:
        inferred = book.get(f"feeders/{row.feeder_id}", rules.FEEDER_OUTAGE)
        if inferred is not None and is_inferred(inferred):
            book.clear(inferred)  # the light talks: its feeder is live
    model = scope.models[row.light_model_id]
    lamp = lamp_of(model)
    await energy.meter(
        scope.tx,
        row,
        lamp.rated_power_w,
        time=measured.time,
        energy_wh=measured.energy_wh,
        power_w=measured.power_w,
        on=measured.on,
        max_gap_s=scope.limits.energy_max_gap_s,
    )
    _store_light(row, measured)
    offline = book.get(subject, rules.CONTROLLER_OFFLINE)
    if offline is not None:
        book.clear(offline)
    reading = rules.LightReading(
        time=measured.time,
        on=is_on(row),
        dim_level=row.dim_level,
        power_w=measured.power_w,
        voltage_v=measured.voltage_v,
        controller_faults=frozenset(row.controller_faults or ()),
        day_burner=measured.day_burner,
    )
    outage = covering_outage(book, row)
    findings = rules.evaluate_light(
        lamp,
        reading,
        in_force_of(row),
        daylight=rules.daylight(row.latitude, row.longitude, measured.time, limits),
        limits=limits,
        under_outage=outage is not None,
    )
    for kind in rules.LIGHT_KINDS:
        finding = findings.get(kind)
        if outage is not None and kind in rules.SYMPTOMS:
            symptom = book.get(subject, kind)
            if symptom is not None:
                book.clear(symptom, folded_detail(outage))
            continue
        book.settle(subject, row, kind, finding)
    return True


def _store_light(row: LightRow, measured: LightMeasured) -> None:
    row.reading_time = measured.time
    row.heartbeat_missed = False
    for name in LIVE_VALUES:
        value = getattr(measured, name)
        if value is not None:
            setattr(row, name, value)
    if measured.flags:
        faults = set(row.controller_faults or ())
        for fault, reported in measured.flags.items():
            if reported:
                faults.add(fault)
            else:
                faults.discard(fault)
        row.controller_faults = sorted(faults)  # a new list: JSON columns track assignment
    if measured.on is not None:
        row.power_state = power_state(measured.on, row.dim_level)
    elif measured.dim_level is not None and row.power_state in (POWER_ON, POWER_LOW):
        row.power_state = power_state(True, row.dim_level)


# -- cabinet readings ----------------------------------------------------------------------------------


def apply_cabinet_reading(scope: Scope, cabinet: CabinetRow, measured: CabinetMeasured) -> bool:
    """One reading of the cabinet's controller (see the module docstring); whether it was fresh."""
    if cabinet.heard_time is None or measured.received > cabinet.heard_time:
        cabinet.heard_time = measured.received
    if cabinet.reading_time is not None and measured.time <= cabinet.reading_time:
        log.debug("late reading of cabinet %s: only heard", cabinet.cabinet_id)
        return False
    _store_cabinet(cabinet, measured)
    book, limits = scope.book, scope.limits
    voltages = (cabinet.voltage_l1_v, cabinet.voltage_l2_v, cabinet.voltage_l3_v)
    circuits = {int(number): closed for number, closed in (cabinet.circuits or {}).items()}
    outage = rules.cabinet_outage(voltages, limits)
    cabinet.outage = outage is not None
    subject = f"cabinets/{cabinet.cabinet_id}"
    open_outage = book.get(subject, rules.CABINET_OUTAGE)
    if outage is not None:
        affected = [light.light_id for light in scope.lights_of_cabinet.get(cabinet.cabinet_id, [])]
        if open_outage is None:
            raised = book.raise_fault(subject, cabinet, outage, affected)
            folded = book.fold(affected, raised)
            log.info(
                "cabinet %s lost its mains: %d light(s) dark, %d lamp fault(s) folded into it",
                cabinet.cabinet_id,
                len(affected),
                folded,
            )
        else:
            book.update(open_outage, outage, affected)
    elif open_outage is not None:
        book.clear(open_outage)
    for feeder in scope.feeders_of_cabinet.get(cabinet.cabinet_id, []):
        dead = rules.feeder_dead(feeder.circuit, feeder.phase, voltages, circuits, limits)
        feeder.energized = outage is None and dead is None
        if outage is not None:
            continue  # the cabinet's outage covers its feeders; their own stay as they are
        feeder_subject = f"feeders/{feeder.feeder_id}"
        open_feeder = book.get(feeder_subject, rules.FEEDER_OUTAGE)
        if dead is not None:
            affected = [light.light_id for light in scope.lights_of_feeder.get(feeder.feeder_id, [])]
            if open_feeder is None:
                raised = book.raise_fault(feeder_subject, cabinet, dead, affected)
                book.fold(affected, raised)
            else:
                book.update(open_feeder, dead, affected)
        elif open_feeder is not None and not is_inferred(open_feeder):
            book.clear(open_feeder)
    return True


def _store_cabinet(cabinet: CabinetRow, measured: CabinetMeasured) -> None:
    cabinet.reading_time = measured.time
    cabinet.heartbeat_missed = False
    l1, l2, l3 = measured.voltages
    if l1 is not None:
        cabinet.voltage_l1_v = l1
    if l2 is not None:
        cabinet.voltage_l2_v = l2
    if l3 is not None:
        cabinet.voltage_l3_v = l3
    if measured.active_power_w is not None:
        cabinet.active_power_w = measured.active_power_w
    if measured.energy_wh is not None:
        cabinet.energy_wh = measured.energy_wh
    if measured.power_factor is not None:
        cabinet.power_factor = measured.power_factor
    if measured.door_open is not None:
        cabinet.door_open = measured.door_open
    if measured.circuits:
        cabinet.circuits = {
            **(cabinet.circuits or {}),
            **{str(number): closed for number, closed in measured.circuits.items()},
        }


# -- the heartbeat -------------------------------------------------------------------------------------


async def sweep_cabinets(tx: Tx, silence: timedelta) -> int:
    """Mark cabinets silent past `silence` missed and heard ones not; how many changed."""
    rows = (
        await tx.session.scalars(
            select(CabinetRow)
            .where(
                CabinetRow.device_id.is_not(None),
                CabinetRow.heard_time.is_not(None),
                or_(CabinetRow.heard_time < tx.now - silence, CabinetRow.heartbeat_missed.is_(True)),
            )
            .order_by(CabinetRow.cabinet_id)
            .with_for_update(skip_locked=True)
        )
    ).all()
    changed = 0
    for row in rows:
        missed = rules.silent(row.heard_time, silence, tx.now)
        if row.heartbeat_missed != missed:
            row.heartbeat_missed = missed
            changed += 1
    return changed


def _timeout(row: LightRow) -> timedelta:
    return timedelta(seconds=row.heartbeat_timeout_s)


async def sweep_lights(tx: Tx, *, after: str = "", limit: int = HEARTBEAT_BATCH) -> tuple[int, str]:
    """The heartbeat of up to `limit` lights after light id `after` that may be silent (past the
    shortest timeout any light has, or marked missed), with every light of their feeders. (How many
    faults were raised or cleared, the last light id looked at; "" when there were no more.)"""
    session, now = tx.session, tx.now
    heard = (LightRow.device_id.is_not(None), LightRow.heard_time.is_not(None))
    shortest = await session.scalar(select(func.min(LightRow.heartbeat_timeout_s)).where(*heard))
    if shortest is None:
        return 0, ""
    candidates = list(
        (
            await session.scalars(
                select(LightRow.light_id)
                .where(
                    *heard,
                    LightRow.light_id > after,
                    or_(
                        LightRow.heard_time < now - timedelta(seconds=shortest),
                        LightRow.heartbeat_missed.is_(True),
                    ),
                )
                .order_by(LightRow.light_id)
                .limit(limit)
            )
        ).all()
    )
    if not candidates:
        return 0, ""
    feeder_ids = sorted(
        {
            feeder_id
            for feeder_id in (
                await session.scalars(select(LightRow.feeder_id).where(LightRow.light_id.in_(candidates)))
            ).all()
            if feeder_id is not None
        }
    )
    siblings: list[tuple[str, str | None, bool]] = []  # light id, feeder id, has a controller heard
    if feeder_ids:
        siblings = [
            (light_id, feeder_id, device_id is not None and heard_time is not None)
            for light_id, feeder_id, device_id, heard_time in (
                await session.execute(
                    select(
                        LightRow.light_id, LightRow.feeder_id, LightRow.device_id, LightRow.heard_time
                    ).where(LightRow.feeder_id.in_(feeder_ids))
                )
            ).all()
        ]
    wanted = sorted(set(candidates) | {light_id for light_id, _, _ in siblings})
    rows = list(
        (
            await session.scalars(
                select(LightRow)
                .where(LightRow.light_id.in_(wanted))
                .order_by(LightRow.light_id)
                .with_for_update(skip_locked=True)  # a light being updated right now is being heard
            )
        ).all()
    )
    by_id = {row.light_id: row for row in rows}
    book = FaultBook(tx)
    await book.load(light_subjects(rows) | {f"feeders/{feeder_id}" for feeder_id in feeder_ids})
    changed = 0
    # The root cause first: a feeder whose lights are all silent.
    for feeder_id in feeder_ids:
        members = [light_id for light_id, feeder, _ in siblings if feeder == feeder_id]
        listening = [light_id for light_id, feeder, heard_ in siblings if feeder == feeder_id and heard_]
        if any(light_id not in by_id for light_id in listening):
            continue  # one of them is being heard right now
        listeners = [
            rules.Listener(light_id, by_id[light_id].heard_time, _timeout(by_id[light_id]))
            for light_id in listening
        ]
        if not rules.feeder_silent(listeners, now):
            continue
        if any(covering_outage(book, by_id[light_id]) is not None for light_id in listening):
            continue  # a reading of the cabinet explains it (or it is inferred already)
        feeder = await session.get(FeederRow, feeder_id)
        cabinet = await session.get(CabinetRow, feeder.cabinet_id) if feeder is not None else None
        if cabinet is None:
            continue
        outage = book.raise_fault(
            f"feeders/{feeder_id}",
            cabinet,
            rules.Finding(rules.FEEDER_OUTAGE, 0.0, 0.0, rules.INFERRED),
            members,
        )
        book.fold([light_id for light_id in members if light_id in by_id], outage)
        changed += 1
        log.info("feeder %s: all %d light(s) silent, an outage inferred", feeder_id, len(listening))
    # Then each light.
    for light_id in candidates:
        row = by_id.get(light_id)
        if row is None:
            continue
        subject = f"lights/{row.light_id}"
        missed = rules.silent(row.heard_time, _timeout(row), now)
        row.heartbeat_missed = missed
        offline = book.get(subject, rules.CONTROLLER_OFFLINE)
        cause = covering_outage(book, row)
        if missed and cause is None:
            if offline is None:  # (an open one keeps the silence it was raised with: no write per sweep)
                assert row.heard_time is not None
                book.raise_fault(
                    subject,
                    row,
                    rules.Finding(
                        rules.CONTROLLER_OFFLINE,
                        (now - row.heard_time).total_seconds(),
                        float(row.heartbeat_timeout_s),
                        f"silent since {row.heard_time:%Y-%m-%d %H:%M:%S} UTC "
                        f"(timeout {row.heartbeat_timeout_s} s)",
                    ),
                )
                changed += 1
        elif offline is not None:
            book.clear(offline, folded_detail(cause) if missed and cause is not None else None)
            changed += 1
    return changed, candidates[-1]


async def sweep_inferred(tx: Tx) -> int:
    """Clear the inferred feeder outages whose feeders are not all silent any more; how many."""
    open_inferred = list(
        (
            await tx.session.scalars(
                select(FaultRow)
                .where(
                    FaultRow.kind == rules.FEEDER_OUTAGE,
                    FaultRow.state != CLEARED,
                    FaultRow.detail == rules.INFERRED,
                )
                .order_by(FaultRow.fault_id)
                .with_for_update(skip_locked=True)
            )
        ).all()
    )
    if not open_inferred:
        return 0
    book = FaultBook(tx)
    await book.load(fault.subject for fault in open_inferred)
    cleared = 0
    for fault in open_inferred:
        feeder_id = fault.subject.partition("/")[2]
        lights = (
            await tx.session.execute(
                select(LightRow.light_id, LightRow.heard_time, LightRow.heartbeat_timeout_s).where(
                    LightRow.feeder_id == feeder_id,
                    LightRow.device_id.is_not(None),
                    LightRow.heard_time.is_not(None),
                )
            )
        ).all()
        listeners = [
            rules.Listener(light_id, heard_time, timedelta(seconds=timeout))
            for light_id, heard_time, timeout in lights
        ]
        if not rules.feeder_silent(listeners, tx.now):
            book.clear(fault)
            cleared += 1
    return cleared


async def prune_energy(tx: Tx, retention_days: int) -> int:
    """Delete the hourly energy buckets older than the retention; how many."""
    result = await tx.session.execute(
        delete(EnergyHourRow).where(EnergyHourRow.hour < tx.now - timedelta(days=retention_days))
    )
    return int(getattr(result, "rowcount", 0) or 0)


class Heartbeat:
    """The periodic heartbeat sweep (`tick()` runs it once, which is what tests call)."""

    def __init__(self, db: Database, settings: StreetlightsSettings) -> None:
        self.db = db
        self.settings = settings
        self._periodic = PeriodicTask(
            "streetlight heartbeat check", settings.heartbeat_check_interval_s, self.tick
        )

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def tick(self) -> int:
        """Sweep every cabinet and light once, and prune old energy; how many faults or cabinet marks
        changed."""
        async with self.db.transaction() as tx:
            total = await sweep_cabinets(tx, timedelta(seconds=self.settings.cabinet_heartbeat_timeout_s))
        after = ""
        while True:
            async with self.db.transaction() as tx:
                changed, after = await sweep_lights(tx, after=after)
            total += changed
            if not after:
                break
        async with self.db.transaction() as tx:
            total += await sweep_inferred(tx)
        async with self.db.transaction() as tx:
            pruned = await prune_energy(tx, self.settings.energy_retention_days)
        if total or pruned:
            log.info("heartbeat sweep: %d change(s), %d old energy bucket(s) deleted", total, pruned)
        return total
