"""Light and cabinet controllers on the devices telemetry feed: what they report, and following the feed.

A light watches the controller named by its `device` (`LightRow.device_id`, type
`StreetlightsSettings.controller_type`, default `streetlight.controller`); a cabinet the controller
named by its `device` (`CabinetRow.device_id`, type `cabinet_type`, default `streetlight.cabinet`).
Their metrics are `cityos_streetlights.metrics` (CONTROLLER_METRICS, CABINET_METRICS), after LwM2M
3311 Light Control and 3416 Outdoor lamp controller:

* light controllers: `on`, `dim_level` (%), `power_w`, `voltage_v`, `current_a`, `power_factor`,
  `energy_wh` (the lifetime meter), `operating_hours`, `switch_count`, and the flags `lamp_failure`,
  `control_gear_failure`, `relay_failure`, `cycling`, `thermal_derating`, `thermal_shutdown` (the
  `ControllerFault`s the light shows while they are reported on) and `day_burner` (the controller's own
  judgement, taken with the reading that carries it);
* cabinet controllers: `voltage_l1_v`, `voltage_l2_v`, `voltage_l3_v`, `active_power_w`, `energy_wh`,
  `power_factor`, `door_open`, and `circuit_<n>` (the breaker of circuit n, 1 closed, 0 open).

Flags are true at 0.5 and above. A reading may carry any subset: what it leaves out keeps its last
value. Other metrics (`rsrp_dbm`, …) are ignored, and so are records of devices no light or cabinet
watches.

The follower is `cityos_platform.feeds.TelemetryFollower` (the subscription, the checkpoint in
`FeedCursorRow("devices.telemetry")` committed with the batch's effects, compare-and-set between
replicas, reconnecting with backoff) with `apply_records` as its callback; what a reading does to a
light or a cabinet, and the faults it raises and clears, is `cityos_streetlights.state`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cityos.devices.v1 import devices_pb2
from cityos_platform import feeds
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database, Tx
from cityos_streetlights import rules, state
from cityos_streetlights.metrics import MAX_CIRCUITS
from cityos_streetlights.models import FeedCursorRow
from cityos_streetlights.settings import StreetlightsSettings

log = logging.getLogger(__name__)

SERVICE = "streetlights"
FEED = feeds.FEED

#: The controller flags that are `ControllerFault`s.
CONTROLLER_FLAGS: dict[str, int] = {
    "lamp_failure": rules.CF_LAMP_FAILURE,
    "control_gear_failure": rules.CF_CONTROL_GEAR_FAILURE,
    "relay_failure": rules.CF_RELAY_FAILURE,
    "cycling": rules.CF_CYCLING,
    "thermal_derating": rules.CF_THERMAL_DERATING,
    "thermal_shutdown": rules.CF_THERMAL_SHUTDOWN,
}
CIRCUIT_PREFIX = "circuit_"


def _flag(values: dict[str, float], name: str) -> bool | None:
    value = values.get(name)
    return None if value is None else value >= 0.5


def light_measured(record: devices_pb2.TelemetryRecord) -> state.LightMeasured:
    """A feed record of a light controller as the light's state and rules read it."""
    values = dict(record.reading.values)
    return state.LightMeasured(
        time=feeds.when(record.reading.time),
        received=feeds.when(record.received_time),
        on=_flag(values, "on"),
        dim_level=values.get("dim_level"),
        power_w=values.get("power_w"),
        voltage_v=values.get("voltage_v"),
        current_a=values.get("current_a"),
        power_factor=values.get("power_factor"),
        energy_wh=values.get("energy_wh"),
        operating_hours=values.get("operating_hours"),
        switch_count=values.get("switch_count"),
        flags={fault: values[name] >= 0.5 for name, fault in CONTROLLER_FLAGS.items() if name in values},
        day_burner=_flag(values, "day_burner"),
    )


def cabinet_measured(record: devices_pb2.TelemetryRecord) -> state.CabinetMeasured:
    """A feed record of a cabinet controller as the cabinet's state and rules read it."""
    values = dict(record.reading.values)
    circuits: dict[int, bool] = {}
    for name, value in values.items():
        if name.startswith(CIRCUIT_PREFIX):
            number = name[len(CIRCUIT_PREFIX) :]
            if number.isdigit() and 1 <= int(number) <= MAX_CIRCUITS:
                circuits[int(number)] = value >= 0.5
    return state.CabinetMeasured(
        time=feeds.when(record.reading.time),
        received=feeds.when(record.received_time),
        voltages=(values.get("voltage_l1_v"), values.get("voltage_l2_v"), values.get("voltage_l3_v")),
        active_power_w=values.get("active_power_w"),
        energy_wh=values.get("energy_wh"),
        power_factor=values.get("power_factor"),
        door_open=_flag(values, "door_open"),
        circuits=circuits,
    )


async def apply_records(
    tx: Tx, records: Sequence[devices_pb2.TelemetryRecord], settings: StreetlightsSettings
) -> int:
    """Apply a batch of feed records in `tx`, in feed order; the number that concerned a bound
    controller. The cabinets, their feeders and the lights concerned are locked first, in one order
    (`state.Scope.lock`: cabinets, feeders, lights, each by id), as everywhere, so writers never
    deadlock."""
    controller_type, cabinet_type = settings.controller_type, settings.cabinet_type
    controllers = feeds.device_ids(records, [controller_type])
    cabinet_controllers = feeds.device_ids(records, [cabinet_type])
    if not controllers and not cabinet_controllers:
        return 0
    scope = await state.Scope.lock(
        tx,
        rules.Limits.from_settings(settings),
        controllers=controllers,
        cabinet_controllers=cabinet_controllers,
    )
    applied = 0
    for record in records:
        device_id = record.device.partition("/")[2]
        if record.type == controller_type:
            light = scope.light_by_device.get(device_id)
            if light is not None:
                await state.apply_light_reading(scope, light, light_measured(record))
                applied += 1
        elif record.type == cabinet_type:
            cabinet = scope.cabinet_by_device.get(device_id)
            if cabinet is not None:
                state.apply_cabinet_reading(scope, cabinet, cabinet_measured(record))
                applied += 1
    return applied


def telemetry_follower(
    db: Database, settings: Settings, sl_settings: StreetlightsSettings, *, clock: Clock = SYSTEM_CLOCK
) -> feeds.TelemetryFollower | None:
    """The follower of the devices feed, when this deployment has one: following is on
    (`CITYOS_STREETLIGHTS_FOLLOW_TELEMETRY`), `CITYOS_ENDPOINTS` names `devices` and the service has
    its client secret (`CITYOS_AUTH_CLIENT_SECRET`). Otherwise None, and the log says what is missing:
    lights and cabinets then have no live state, no faults and no energy."""
    if not sl_settings.follow_telemetry:
        log.info(
            "light and cabinet state from telemetry is off (CITYOS_STREETLIGHTS_FOLLOW_TELEMETRY=false): "
            "no live state, no faults, no energy"
        )
        return None

    async def apply(tx: Tx, records: Sequence[devices_pb2.TelemetryRecord]) -> int:
        return await apply_records(tx, records, sl_settings)

    return feeds.telemetry_follower(
        db,
        settings,
        SERVICE,
        types=[sl_settings.controller_type, sl_settings.cabinet_type],
        cursor_model=FeedCursorRow,
        apply=apply,
        retry_s=sl_settings.feed_retry_s,
        without="lights and cabinets get no live state, no faults and no energy from their controllers",
        clock=clock,
    )
