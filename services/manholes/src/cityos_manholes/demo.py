"""The embedded city's manhole covers: about a hundred across the demo district, and their terminals.

Two entry points, both run by `cityos dev` (through `cityos simulate`):

* `cityos.device_behaviours` → `behaviours()`: one NB-IoT terminal per cover (`manhole.terminal`,
  metrics after LwM2M 3408 Manhole Cover and 3429 Tilt), provisioned and driven by the devices
  simulator. Normal readings wander around a quiet well — the lid shut and flat at its install angle, a
  little water, traces of gas, a draining battery — and now and then an incident starts:
  - **theft** (at night, 00:00 to 05:00 Xiong'an time): the lid opened, tilted, then displaced, for a few
    readings, then back;
  - **storm**: for the first ten minutes of every third hour of the day, storm-water wells fill past
    their 1.5 m line and drain again;
  - **gas leak**: a gas well's methane climbs past its threshold for a while.
* `cityos.simulators` → `run_embedded()`: creates the covers through the CoverService (idempotent by
  request id: a restart creates nothing twice).

`cover_point()` and `cover_kind()` are shared by both, so terminal `mh-0042` sits on cover `mh-0042`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf import duration_pb2

from cityos.common.v1 import resources_pb2
from cityos.manholes.v1 import manholes_pb2, manholes_pb2_grpc
from cityos_platform.seeding import create_or_keep

if TYPE_CHECKING:  # the devices simulator imports this module; manholes itself does not need devices
    from cityos_devices.simulator import Behaviour, DeviceState

log = logging.getLogger(__name__)

PREFIX = "mh"
MODEL = "demo-manhole-terminal-v1"
COUNT = 100
INTERVAL_S = 120  # a simulated reading stands for two minutes of the street
XIONGAN = timedelta(hours=8)
# The demo district's bounds (the `city` area of the platform's area registry).
SOUTH, NORTH, WEST, EAST = 38.965, 39.040, 115.880, 116.020

# (kind, owner organization, share of the covers)
KINDS: tuple[tuple[int, str, float], ...] = (
    (manholes_pb2.COVER_KIND_SEWER, "utilities", 0.30),
    (manholes_pb2.COVER_KIND_STORM_WATER, "utilities", 0.25),
    (manholes_pb2.COVER_KIND_WATER_SUPPLY, "utilities", 0.12),
    (manholes_pb2.COVER_KIND_POWER, "public-works", 0.12),
    (manholes_pb2.COVER_KIND_TELECOM, "public-works", 0.10),
    (manholes_pb2.COVER_KIND_GAS, "utilities", 0.06),
    (manholes_pb2.COVER_KIND_HEAT, "utilities", 0.05),
)
ROADS = (
    manholes_pb2.ROAD_CLASS_ARTERIAL,
    manholes_pb2.ROAD_CLASS_COLLECTOR,
    manholes_pb2.ROAD_CLASS_LOCAL,
    manholes_pb2.ROAD_CLASS_LOCAL,
    manholes_pb2.ROAD_CLASS_SIDEWALK,
)
STORM_LINE_M = 1.5


def _rng(n: int) -> random.Random:
    return random.Random(f"manhole-{n}")  # noqa: S311 (a simulation)


def cover_point(n: int) -> tuple[float, float]:
    rng = _rng(n)
    return round(rng.uniform(SOUTH, NORTH), 6), round(rng.uniform(WEST, EAST), 6)


def cover_kind(n: int) -> tuple[int, str]:
    """The n-th cover's kind and owner, in the KINDS shares."""
    position, running = (n + 0.5) / COUNT, 0.0
    for kind, owner, share in KINDS:
        running += share
        if position <= running:
            return kind, owner
    return KINDS[-1][0], KINDS[-1][1]


def install_angle(n: int) -> float:
    return round(_rng(n).uniform(0.5, 3.0), 1)


def local_hour(now: datetime | None = None) -> float:
    moment = (now or datetime.now(UTC)) + XIONGAN
    return moment.hour + moment.minute / 60


def storm(now: datetime | None = None) -> bool:
    """The first ten minutes of every third hour."""
    moment = (now or datetime.now(UTC)) + XIONGAN
    return moment.hour % 3 == 0 and moment.minute < 10


# Incidents under way: device id -> (incident, readings left).
_INCIDENTS: dict[str, tuple[str, int]] = {}


def _sample(state: DeviceState, rng: random.Random) -> dict[str, float]:
    n = int(state.device_id.rsplit("-", 1)[1])
    kind, _ = cover_kind(n)
    angle = install_angle(n)
    incident, left = _INCIDENTS.get(state.device_id, ("", 0))
    if not left:
        incident = ""
        hour = local_hour()
        if hour < 5 and rng.random() < 0.002:
            incident, left = "theft", 6
        elif kind == manholes_pb2.COVER_KIND_GAS and rng.random() < 0.003:
            incident, left = "gas", 8
    if left:
        _INCIDENTS[state.device_id] = (incident, left - 1)
    water = max(0.05, state.values.get("water_level_m", 0.3) * 0.9 + 0.03 + rng.gauss(0, 0.01))
    if kind == manholes_pb2.COVER_KIND_STORM_WATER and storm():
        water = min(3.0, water + 0.35)
    values = {
        "open": 0.0,
        "tilt_deg": round(angle + rng.gauss(0, 0.2), 2),
        "displaced": 0.0,
        "water_level_m": round(water, 2),
        "ch4_pct_lel": round(max(0.0, rng.gauss(1.0, 0.5)), 2),
        "h2s_ppm": round(max(0.0, rng.gauss(0.5, 0.3)), 2),
        "co_ppm": round(max(0.0, rng.gauss(2.0, 1.0)), 2),
        "voc_ppm": round(max(0.0, rng.gauss(5.0, 2.0)), 2),
        "temperature_c": round(12 + 6 * math.sin(local_hour() / 24 * 2 * math.pi) + rng.gauss(0, 0.3), 1),
        "smoke": 0.0,
        "battery_v": round(state.battery_v, 3),
        "rsrp_dbm": round(state.rsrp_dbm),
    }
    if incident == "theft":
        values.update({"open": 1.0, "tilt_deg": round(angle + 35 + rng.uniform(0, 20), 1)})
        if left <= 3:
            values["displaced"] = 1.0
    elif incident == "gas":
        values["ch4_pct_lel"] = round(25 + rng.uniform(0, 30), 1)
    return values


def behaviours() -> list[Behaviour]:
    """The `cityos.device_behaviours` entry point: one terminal per demo cover."""
    from cityos.devices.v1 import devices_pb2
    from cityos_devices.simulator import Behaviour

    spec = devices_pb2.MetricSpec
    model = devices_pb2.DeviceModel(
        type="manhole.terminal",
        vendor="CityOS Demo",
        display_name="Manhole cover terminal (NB-IoT; LwM2M 3408/3429)",
        supported_commands=["reboot", "set_interval", "recalibrate_tilt"],
        metrics=[
            spec(name="open", unit="1", min=0, max=1),
            spec(name="tilt_deg", unit="deg", min=0, max=180),
            spec(name="displaced", unit="1", min=0, max=1),
            spec(name="water_level_m", unit="m", min=0, max=20),
            spec(name="ch4_pct_lel", unit="%LEL", min=0, max=100),
            spec(name="h2s_ppm", unit="ppm", min=0, max=1000),
            spec(name="co_ppm", unit="ppm", min=0, max=2000),
            spec(name="voc_ppm", unit="ppm", min=0, max=5000),
            spec(name="temperature_c", unit="Cel", min=-40, max=85),
            spec(name="smoke", unit="1", min=0, max=1),
            spec(name="battery_v", unit="V", min=0, max=4.2),
            spec(name="rsrp_dbm", unit="dBm", min=-150, max=-30),
        ],
        reporting_interval=duration_pb2.Duration(seconds=INTERVAL_S),
    )
    return [
        Behaviour(
            model_id=MODEL,
            model=model,
            prefix=PREFIX,
            owner_organization="utilities",
            count=COUNT,
            psm_periodic_update_s=3600,
            tags=("demo", "manholes"),
            place=lambda n, rng: cover_point(n),
            sample=_sample,
        )
    ]


def _kind_title(kind: int) -> str:
    """`COVER_KIND_STORM_WATER` -> `Storm Water`."""
    return manholes_pb2.CoverKind.Name(kind).removeprefix("COVER_KIND_").replace("_", " ").title()  # type: ignore[arg-type]


async def seed(channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]]) -> int:
    """Create the demo covers that do not exist yet; returns how many the district has."""
    covers = manholes_pb2_grpc.CoverServiceStub(channel)
    for n in range(COUNT):
        kind, owner = cover_kind(n)
        lat, lng = cover_point(n)
        thresholds = manholes_pb2.Thresholds()
        if kind == manholes_pb2.COVER_KIND_STORM_WATER:
            thresholds.water_level_m = STORM_LINE_M
        cover = manholes_pb2.Cover(
            display_name=f"{_kind_title(kind)} {n:04d}",
            kind=kind,  # type: ignore[arg-type]
            ownership=resources_pb2.Ownership(
                owner_organization=owner, maintainer_organization="public-works"
            ),
            location=resources_pb2.GeoPoint(latitude=lat, longitude=lng),
            road_class=ROADS[n % len(ROADS)],
            material="ductile iron" if n % 4 else "composite",
            install_angle_deg=install_angle(n),
            device=f"devices/{PREFIX}-{n:04d}",
            thresholds=thresholds,
        )
        cover_id = f"{PREFIX}-{n:04d}"
        await create_or_keep(
            covers.CreateCover,
            manholes_pb2.CreateCoverRequest(
                cover=cover, cover_id=cover_id, request_id=f"demo-cover-{cover_id}"
            ),
            metadata,
        )
    return COUNT


async def run_embedded(endpoints: dict[str, str], token: str, var_dir: Path, speedup: float) -> None:
    """The `cityos.simulators` entry point: seed the demo covers once the city is up."""
    async with grpc.aio.insecure_channel(endpoints["manholes"]) as channel:
        count = await seed(channel, (("authorization", f"Bearer {token}"),))
    log.info("manholes: %d demo covers are in place", count)
