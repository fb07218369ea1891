"""The embedded city's streetlights: six streets of lamps on three cabinets, with schedules, and their
controllers.

Two entry points, both run by `cityos dev` (through `cityos simulate`):

* `cityos.device_behaviours` → `behaviours()`: one lamp controller per light (`streetlight.controller`,
  NB-IoT, mains powered so always reachable; metrics in `cityos_streetlights.metrics`) and one
  controller per cabinet (`streetlight.cabinet`, LTE-M). A lamp follows what it is told — the desired
  state its group's schedule puts on its twin, and `set_light` commands — and reports power, energy and
  burning hours accordingly. Faults are injected so the fault rules have something to find:
  - **failed lamp**: `sl-0007` reports a lamp failure (dark, no power) in odd hours, Xiong'an time;
  - **day burner**: `sl-0042` burns at full power in the first half of every daytime hour, whatever it
    was told;
  - **cabinet outage**: `cab-03` loses its mains in minutes 30-39 of every fourth hour; its lamps fall
    silent meanwhile (no supply, no radio), the cabinet reports dead phases — one root-cause fault.
* `cityos.simulators` → `run_embedded()`: creates the lamp models, schedules, cabinets, feeders, groups
  and lights through the API (idempotent by request id: a restart creates nothing twice).

The topology: cabinet `cab-0n` feeds two streets; each street is two feeders (circuits), lamps 0-19 on
the first and 20-39 on the second; each street is one group on its schedule. Owner `public-works`,
operated by the PPP concessionaire `xiongan-lighting`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2

from cityos.common.v1 import resources_pb2
from cityos.streetlights.v1 import inventory_pb2, inventory_pb2_grpc, schedules_pb2, schedules_pb2_grpc
from cityos_platform.seeding import create_or_keep
from cityos_streetlights.metrics import CABINET_METRICS, CONTROLLER_METRICS, DIM_LEVEL, SET_LIGHT

if TYPE_CHECKING:  # the devices simulator imports this module; streetlights itself does not need devices
    from cityos_devices.simulator import Behaviour, DeviceState

log = logging.getLogger(__name__)

OWNER, OPERATOR = "public-works", "xiongan-lighting"
LAMP_PREFIX, CABINET_PREFIX = "sl", "slc"
LAMP_MODEL, CABINET_MODEL = "demo-lamp-controller-v1", "demo-cabinet-controller-v1"
LAMPS_PER_STREET = 40
LAMP_INTERVAL_S, CABINET_INTERVAL_S = 600, 300  # NB-IoT lamp controllers report every 10 minutes
SPACING_DEG = 0.0003  # about 30 m between poles
XIONGAN = timedelta(hours=8)
FAILED_LAMP, DAY_BURNER, OUT_CABINET = "sl-0007", "sl-0042", 3


@dataclass(frozen=True)
class Street:
    slug: str
    name: str
    cabinet: int  # 1-based
    start: tuple[float, float]
    heading: tuple[float, float]  # degrees of latitude, longitude per pole
    model: str
    schedule: str
    category: str


STREETS: tuple[Street, ...] = (
    Street("qihang", "Qihang Avenue", 1, (38.990, 115.905), (0.0, 1.0), "led-90", "arterial", "road"),
    Street("rongxi", "Rongxi Road", 1, (38.995, 115.910), (1.0, 0.0), "led-60", "residential", "road"),
    Street("baiyang", "Baiyangdian Avenue", 2, (39.005, 115.930), (0.0, 1.0), "led-90", "arterial", "road"),
    Street("jinhu", "Jinhu Street", 2, (39.010, 115.940), (1.0, 0.3), "led-60", "residential", "sidewalk"),
    Street("xiongzhou", "Xiongzhou Road", 3, (39.020, 115.960), (0.0, 1.0), "hps-150", "arterial", "road"),
    Street("anxin", "Anxin Lane", 3, (39.025, 115.975), (1.0, 0.0), "led-60", "residential", "park"),
)
MODELS: dict[str, tuple[str, int, float, float, int]] = {
    # id: (display name, technology, rated W, flux lm, lowest dim level %)
    "led-90": ("LED road lantern 90 W", inventory_pb2.LAMP_TECHNOLOGY_LED, 90.0, 12_600.0, 10),
    "led-60": ("LED residential lantern 60 W", inventory_pb2.LAMP_TECHNOLOGY_LED, 60.0, 8_100.0, 10),
    "hps-150": (
        "High-pressure sodium 150 W (to be replaced)",
        inventory_pb2.LAMP_TECHNOLOGY_HPS,
        150.0,
        17_500.0,
        50,
    ),
}
STANDBY_W = 0.6
CABINETS = 3


def _anchor(anchor: int, dim_level: int, offset_min: int = 0) -> schedules_pb2.ScheduleStep:
    return schedules_pb2.ScheduleStep(
        anchor=anchor,  # type: ignore[arg-type]
        offset=duration_pb2.Duration(seconds=offset_min * 60),
        dim_level=dim_level,
    )


def _fixed(local_time: str, dim_level: int) -> schedules_pb2.ScheduleStep:
    return schedules_pb2.ScheduleStep(
        anchor=schedules_pb2.STEP_ANCHOR_FIXED_TIME, local_time=local_time, dim_level=dim_level
    )


SCHEDULES: dict[str, tuple[str, list[schedules_pb2.ScheduleStep]]] = {
    "arterial": (
        "Arterial roads: full from just before sunset, 70 % late at night",
        [
            _anchor(schedules_pb2.STEP_ANCHOR_SUNSET, 100, -10),
            _fixed("23:00", 70),
            _fixed("05:00", 100),
            _anchor(schedules_pb2.STEP_ANCHOR_SUNRISE, 0, 10),
        ],
    ),
    "residential": (
        "Residential streets: 80 % at sunset, 40 % from 22:00, off at sunrise",
        [
            _anchor(schedules_pb2.STEP_ANCHOR_SUNSET, 80),
            _fixed("22:00", 40),
            _fixed("05:30", 60),
            _anchor(schedules_pb2.STEP_ANCHOR_SUNRISE, 0),
        ],
    ),
}


def lamp_number(street_index: int, k: int) -> int:
    return street_index * LAMPS_PER_STREET + k


def lamp_point(n: int) -> tuple[float, float]:
    street = STREETS[n // LAMPS_PER_STREET]
    k = n % LAMPS_PER_STREET
    dlat, dlng = street.heading
    return round(street.start[0] + dlat * SPACING_DEG * k, 6), round(
        street.start[1] + dlng * SPACING_DEG * k, 6
    )


def cabinet_point(c: int) -> tuple[float, float]:
    """Cabinet c (1-based) stands at the start of its first street."""
    first = next(street for street in STREETS if street.cabinet == c)
    return first.start[0] - 0.0002, first.start[1] - 0.0002


def feeder_id(street: Street, k: int) -> str:
    return f"f-{street.slug}-{'a' if k < LAMPS_PER_STREET // 2 else 'b'}"


def circuit(street: Street, k: int) -> int:
    """Circuits of a cabinet: two per street, in street order."""
    position = [s for s in STREETS if s.cabinet == street.cabinet].index(street)
    return position * 2 + (1 if k < LAMPS_PER_STREET // 2 else 2)


# -- the simulated devices ---------------------------------------------------------------------------


def local_time(now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) + XIONGAN


def cabinet_out(c: int, now: datetime | None = None) -> bool:
    """Cabinet `OUT_CABINET` loses its mains in minutes 30-39 of every fourth hour."""
    moment = local_time(now)
    return c == OUT_CABINET and moment.hour % 4 == 0 and 30 <= moment.minute < 40


@dataclass
class Lamp:
    level: int = 0
    energy_wh: float = 0.0
    hours: float = 0.0
    switches: int = 0
    power_w: float = 0.0
    last: float = 0.0


# What each simulated lamp remembers (device id -> Lamp); the cabinets read their lamps' power here.
_LAMPS: dict[str, Lamp] = {}


def _lamp(state: DeviceState) -> Lamp:
    lamp = _LAMPS.get(state.device_id)
    if lamp is None:
        rng = random.Random(state.device_id)  # noqa: S311 (a simulation)
        lamp = _LAMPS[state.device_id] = Lamp(
            energy_wh=rng.uniform(50_000, 400_000), hours=rng.uniform(2_000, 15_000), last=time.monotonic()
        )
    return lamp


def _set_level(state: DeviceState, level: int) -> None:
    lamp = _lamp(state)
    if lamp.level == 0 and level > 0:
        lamp.switches += 1
    lamp.level = max(0, min(100, level))


def _on_command(state: DeviceState, command: str, parameters: dict[str, str]) -> tuple[bool, str]:
    if command != SET_LIGHT:
        return True, "done (simulated)"
    try:
        level = int(parameters.get(DIM_LEVEL, ""))
    except ValueError:
        return False, f"bad dim_level {parameters.get(DIM_LEVEL)!r}"
    if state.device_id == FAILED_LAMP and local_time().hour % 2:
        return False, "lamp failure: cannot light"
    _set_level(state, level)
    return True, f"dim_level {level}"


def _on_desired(state: DeviceState, desired: dict[str, Any]) -> None:
    if isinstance(desired.get(DIM_LEVEL), int | float):
        _set_level(state, int(desired[DIM_LEVEL]))


def _lamp_sample(state: DeviceState, rng: random.Random) -> dict[str, float] | None:
    n = int(state.device_id.rsplit("-", 1)[1])
    street = STREETS[(n // LAMPS_PER_STREET) % len(STREETS)]
    if cabinet_out(street.cabinet):
        return None  # no supply: the controller is dark and silent
    lamp = _lamp(state)
    now = time.monotonic()
    elapsed_h = min(now - lamp.last, 3600.0) / 3600
    lamp.last = now
    _, _, rated, _, _ = MODELS[street.model]
    moment = local_time()
    level = lamp.level
    failed = state.device_id == FAILED_LAMP and moment.hour % 2 == 1
    burning_by_day = state.device_id == DAY_BURNER and 7 <= moment.hour < 17 and moment.minute < 30
    if burning_by_day:
        level = 100
    power = STANDBY_W
    if level > 0 and not failed:
        power += rated * level / 100 * (1 + rng.gauss(0, 0.02))
    # The meter counts the interval just ended at the power it burned at.
    lamp.energy_wh += lamp.power_w * elapsed_h
    if lamp.power_w > STANDBY_W * 2:
        lamp.hours += elapsed_h
    lamp.power_w = power
    voltage = 228 + rng.gauss(0, 1.5)
    factor = 0.9 if street.model.startswith("hps") else 0.96
    return {
        "on": 1.0 if level > 0 and not failed else 0.0,
        "dim_level": float(level),
        "power_w": round(power, 1),
        "voltage_v": round(voltage, 1),
        "current_a": round(power / (voltage * factor), 3),
        "power_factor": factor,
        "energy_wh": round(lamp.energy_wh, 1),
        "operating_hours": round(lamp.hours, 2),
        "switch_count": float(lamp.switches),
        "lamp_failure": 1.0 if failed else 0.0,
        "rsrp_dbm": round(state.rsrp_dbm),
    }


_CABINET_METERS: dict[str, list[float]] = {}  # device id -> [energy Wh, last monotonic time]


def _cabinet_sample(state: DeviceState, rng: random.Random) -> dict[str, float] | None:
    c = int(state.device_id.rsplit("-", 1)[1])
    out = cabinet_out(c)
    lamps = [
        _LAMPS[f"{LAMP_PREFIX}-{lamp_number(i, k):04d}"]
        for i, street in enumerate(STREETS)
        if street.cabinet == c
        for k in range(LAMPS_PER_STREET)
        if f"{LAMP_PREFIX}-{lamp_number(i, k):04d}" in _LAMPS
    ]
    power = 0.0 if out else sum(lamp.power_w for lamp in lamps) + 35.0  # the cabinet's own gear
    start = random.Random(c).uniform(1e6, 5e6)  # noqa: S311 (a simulation)
    meter = _CABINET_METERS.setdefault(state.device_id, [start, time.monotonic()])
    now = time.monotonic()
    meter[0] += power * min(now - meter[1], 3600.0) / 3600
    meter[1] = now
    values = {
        "voltage_l1_v": 0.0 if out else round(230 + rng.gauss(0, 1.5), 1),
        "voltage_l2_v": 0.0 if out else round(230 + rng.gauss(0, 1.5), 1),
        "voltage_l3_v": 0.0 if out else round(230 + rng.gauss(0, 1.5), 1),
        "active_power_w": round(power, 1),
        "energy_wh": round(meter[0], 1),
        "power_factor": 0.95,
        "door_open": 0.0,
    }
    for street in STREETS:
        if street.cabinet == c:
            for k in (0, LAMPS_PER_STREET - 1):
                values[f"circuit_{circuit(street, k)}"] = 1.0
    return values


def behaviours() -> list[Behaviour]:
    """The `cityos.device_behaviours` entry point: a controller per demo lamp and per cabinet."""
    from cityos.devices.v1 import devices_pb2
    from cityos_devices.simulator import Behaviour

    def model(
        device_type: str,
        name: str,
        metrics: dict[str, tuple[str, float, float]],
        interval: int,
        commands: list[str],
    ) -> devices_pb2.DeviceModel:
        return devices_pb2.DeviceModel(
            type=device_type,
            vendor="CityOS Demo",
            display_name=name,
            supported_commands=commands,
            metrics=[
                devices_pb2.MetricSpec(name=m, unit=u, min=lo, max=hi) for m, (u, lo, hi) in metrics.items()
            ],
            reporting_interval=duration_pb2.Duration(seconds=interval),
        )

    return [
        Behaviour(
            model_id=LAMP_MODEL,
            model=model(
                "streetlight.controller",
                "Outdoor lamp controller (NB-IoT; LwM2M 3311/3416)",
                CONTROLLER_METRICS,
                LAMP_INTERVAL_S,
                [SET_LIGHT, "reboot"],
            ),
            prefix=LAMP_PREFIX,
            owner_organization=OWNER,
            count=LAMPS_PER_STREET * len(STREETS),
            tags=("demo", "streetlights"),
            place=lambda n, rng: lamp_point(n),
            sample=_lamp_sample,
            on_command=_on_command,
            on_desired=_on_desired,
        ),
        Behaviour(
            model_id=CABINET_MODEL,
            model=model(
                "streetlight.cabinet",
                "Lighting cabinet controller (LTE-M)",
                CABINET_METRICS,
                CABINET_INTERVAL_S,
                ["reboot"],
            ),
            prefix=CABINET_PREFIX,
            owner_organization=OWNER,
            count=CABINETS + 1,  # slc-0000 is a spare on the shelf (bound to nothing)
            radio=devices_pb2.RADIO_TYPE_LTE_M,
            tags=("demo", "streetlights"),
            place=lambda n, rng: cabinet_point(max(1, min(CABINETS, n))),
            sample=_cabinet_sample,
        ),
    ]


# -- the inventory, through the API --------------------------------------------------------------------


def _ownership() -> resources_pb2.Ownership:
    return resources_pb2.Ownership(owner_organization=OWNER, operator_organization=OPERATOR)


async def seed(channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]]) -> int:
    """Create what does not exist yet; returns how many lights the district has."""
    inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
    schedules = schedules_pb2_grpc.ScheduleServiceStub(channel)
    pb = inventory_pb2
    for model_id, (name, technology, rated, flux, lowest) in MODELS.items():
        await create_or_keep(
            inventory.CreateLightModel,
            pb.CreateLightModelRequest(
                light_model=pb.LightModel(
                    display_name=name,
                    ownership=resources_pb2.Ownership(owner_organization=OWNER),
                    lamp_technology=technology,  # type: ignore[arg-type]
                    rated_power_w=rated,
                    standby_power_w=STANDBY_W,
                    luminous_flux_lm=flux,
                    color_temperature_k=2000 if technology == pb.LAMP_TECHNOLOGY_HPS else 3000,
                    working_life_h=24_000 if technology == pb.LAMP_TECHNOLOGY_HPS else 100_000,
                    minimum_dim_level=lowest,
                    manufacturer="CityOS Demo Lighting",
                ),
                light_model_id=model_id,
                request_id=f"demo-model-{model_id}",
            ),
            metadata,
        )
    for schedule_id, (name, steps) in SCHEDULES.items():
        await create_or_keep(
            schedules.CreateSchedule,
            schedules_pb2.CreateScheduleRequest(
                schedule=schedules_pb2.Schedule(
                    display_name=name, ownership=_ownership(), time_zone="Asia/Shanghai", steps=steps
                ),
                schedule_id=schedule_id,
                request_id=f"demo-schedule-{schedule_id}",
            ),
            metadata,
        )
    for c in range(1, CABINETS + 1):
        lat, lng = cabinet_point(c)
        await create_or_keep(
            inventory.CreateCabinet,
            pb.CreateCabinetRequest(
                cabinet=pb.Cabinet(
                    display_name=f"Lighting cabinet {c:02d}",
                    ownership=_ownership(),
                    location=resources_pb2.GeoPoint(latitude=lat, longitude=lng),
                    working_mode=pb.WORKING_MODE_SEMIAUTOMATIC,
                    device=f"devices/{CABINET_PREFIX}-{c:04d}",
                    serial_number=f"XA-CAB-{c:04d}",
                    maximum_power_w=15_000,
                ),
                cabinet_id=f"cab-{c:02d}",
                request_id=f"demo-cabinet-{c:02d}",
            ),
            metadata,
        )
    for i, street in enumerate(STREETS):
        cabinet = f"cabinets/cab-{street.cabinet:02d}"
        for k, phase in ((0, pb.PHASE_L1), (LAMPS_PER_STREET - 1, pb.PHASE_L2)):
            fid = feeder_id(street, k)
            await create_or_keep(
                inventory.CreateFeeder,
                pb.CreateFeederRequest(
                    feeder=pb.Feeder(
                        display_name=f"{street.name} circuit {fid[-1].upper()}",
                        cabinet=cabinet,
                        circuit=circuit(street, k),
                        phase=phase,
                    ),
                    feeder_id=fid,
                    request_id=f"demo-feeder-{fid}",
                ),
                metadata,
            )
        await create_or_keep(
            inventory.CreateGroup,
            pb.CreateGroupRequest(
                group=pb.Group(
                    display_name=street.name,
                    description=f"Every lamp of {street.name}, on the {street.schedule} schedule",
                    ownership=_ownership(),
                    cabinet=cabinet,
                    schedule=f"schedules/{street.schedule}",
                ),
                group_id=f"grp-{street.slug}",
                request_id=f"demo-group-{street.slug}",
            ),
            metadata,
        )
        for k in range(LAMPS_PER_STREET):
            n = lamp_number(i, k)
            light_id = f"{LAMP_PREFIX}-{n:04d}"
            lat, lng = lamp_point(n)
            await create_or_keep(
                inventory.CreateLight,
                pb.CreateLightRequest(
                    light=pb.Light(
                        display_name=f"{street.name} {k + 1:02d}",
                        ownership=_ownership(),
                        location=resources_pb2.GeoPoint(latitude=lat, longitude=lng),
                        model=f"lightModels/{street.model}",
                        feeder=f"feeders/{feeder_id(street, k)}",
                        group=f"groups/grp-{street.slug}",
                        device=f"devices/{light_id}",
                        pole_number=f"{street.slug.upper()}-{k + 1:03d}",
                        street=street.name,
                        location_category=street.category,
                        lantern_height_m=10.0 if street.schedule == "arterial" else 6.0,
                    ),
                    light_id=light_id,
                    request_id=f"demo-light-{light_id}",
                ),
                metadata,
            )
    return LAMPS_PER_STREET * len(STREETS)


async def run_embedded(endpoints: dict[str, str], token: str, var_dir: Path, speedup: float) -> None:
    """The `cityos.simulators` entry point: seed the demo streets once the city is up."""
    async with grpc.aio.insecure_channel(endpoints["streetlights"]) as channel:
        count = await seed(channel, (("authorization", f"Bearer {token}"),))
    log.info("streetlights: %d demo lights on %d cabinets are in place", count, CABINETS)
