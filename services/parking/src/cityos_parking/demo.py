"""The embedded city's parking: a demo district in Rongdong and the sensors that make it live.

Two entry points, both run by `cityos dev` (through `cityos simulate`):

* `cityos.device_behaviours` → `behaviours()`: the spot sensors (`parking.sensor`, LwM2M 3431-like:
  `occupied`, `forbidden_parking`, `battery_v`), one per on-street spot, provisioned and driven by the
  devices simulator. Each sensor is a two-state Markov chain whose stationary share of "occupied" follows
  a daily curve of the district (quiet at night, a morning rise, a lunch peak, an evening shoulder),
  read on Xiong'an's clock (UTC+8), with stays of about 45 simulated minutes.
* `cityos.simulators` → `run_embedded()`: creates the district through the parking API — six street
  segments (`OnStreetParking`, 240 spots with sensors, operated by the Rongdong PPP concessionaire) and
  two garages counting at their gates (`OffStreetParking`, BALANCING) — and then drives the garages'
  gates along their own curves with RecordGatePassage. Every create carries a fixed request id and an
  existing resource is left as it is, so a restart seeds nothing twice.

The layout (`SEGMENTS`, `spot_point`) is shared by both, so sensor `pk-0042` stands exactly on the spot
that binds it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import duration_pb2

from cityos.common.v1 import resources_pb2
from cityos.parking.v1 import availability_pb2, availability_pb2_grpc, parking_pb2, parking_pb2_grpc
from cityos_platform.seeding import create_or_keep

if TYPE_CHECKING:  # the devices simulator imports this module; parking itself does not need devices
    from cityos_devices.simulator import Behaviour, DeviceState

log = logging.getLogger(__name__)

XIONGAN = timedelta(hours=8)
SENSOR_PREFIX = "pk"
SENSOR_MODEL = "demo-parking-sensor-v1"
SENSOR_INTERVAL_S = 60  # a simulated reading stands for a minute of the street
MEAN_STAY_MIN = 45.0
OWNER = "transport"
OPERATOR = "rongdong-parking"  # the PPP concessionaire of Rongdong's parking (identity's demo)


@dataclass(frozen=True)
class Segment:
    """A street segment: spots evenly spaced from `start` to `end` (lat, lng), one sensor each."""

    site_id: str
    display_name: str
    start: tuple[float, float]
    end: tuple[float, float]
    spots: int
    # How busy it is against the district's curve (a shopping street above 1, a side street below).
    busyness: float


# Around Rongdong's central park (the hole in the district's polygon), not in it.
SEGMENTS: tuple[Segment, ...] = (
    Segment(
        "rongdong-ave-north", "Rongdong Avenue, north side", (39.0095, 115.9350), (39.0095, 115.9390), 40, 1.1
    ),
    Segment(
        "rongdong-ave-south", "Rongdong Avenue, south side", (39.0091, 115.9350), (39.0091, 115.9390), 40, 1.0
    ),
    Segment("jinxiu-road-east", "Jinxiu Road, east side", (38.9930, 115.9562), (38.9960, 115.9562), 40, 0.8),
    Segment("jinxiu-road-west", "Jinxiu Road, west side", (38.9930, 115.9558), (38.9960, 115.9558), 40, 0.8),
    Segment("market-street", "Market Street", (39.0100, 115.9450), (39.0100, 115.9490), 40, 1.25),
    Segment("school-lane", "School Lane", (38.9940, 115.9350), (38.9965, 115.9350), 40, 0.6),
)
SENSOR_COUNT = sum(segment.spots for segment in SEGMENTS)


@dataclass(frozen=True)
class Garage:
    site_id: str
    display_name: str
    location: tuple[float, float]
    capacity: int
    floors: tuple[str, ...]
    # Peak hour of its day (a station garage fills early, a mall garage in the afternoon).
    peak_hour: float


GARAGES: tuple[Garage, ...] = (
    Garage("station-garage", "Xiong'an Station Garage", (39.0290, 115.9480), 400, ("b1", "b2"), 9.0),
    Garage(
        "rongdong-mall-garage", "Rongdong Mall Garage", (39.0020, 115.9600), 250, ("b1", "b2", "b3"), 15.0
    ),
)


def spot_point(n: int) -> tuple[Segment, int, tuple[float, float]]:
    """The segment, the index within it and the point of the n-th sensor spot of the district."""
    for segment in SEGMENTS:
        if n < segment.spots:
            fraction = (n + 0.5) / segment.spots
            lat = segment.start[0] + (segment.end[0] - segment.start[0]) * fraction
            lng = segment.start[1] + (segment.end[1] - segment.start[1]) * fraction
            return segment, n, (round(lat, 7), round(lng, 7))
        n -= segment.spots
    raise IndexError(f"the district has {SENSOR_COUNT} sensor spots")


def local_hour(now: datetime | None = None) -> float:
    """The hour of the day in Xiong'an (UTC+8), with fractions."""
    moment = (now or datetime.now(UTC)) + XIONGAN
    return moment.hour + moment.minute / 60


def street_curve(hour: float) -> float:
    """The share of on-street spots taken at an hour of the day: ~15% at night, ~80% at the late
    morning and lunch peak, ~60% in the evening (a commercial district's typical weekday)."""

    def bump(centre: float, width: float, height: float) -> float:
        return height * math.exp(-(((hour - centre) / width) ** 2))

    return min(0.95, 0.15 + bump(10.5, 2.5, 0.55) + bump(13.0, 1.5, 0.15) + bump(19.0, 2.5, 0.40))


def garage_curve(hour: float, peak_hour: float) -> float:
    """A garage's occupancy at an hour: a broad day around its peak over a 10% overnight base."""
    distance = min(abs(hour - peak_hour), 24 - abs(hour - peak_hour))
    return 0.10 + 0.80 * math.exp(-((distance / 4.0) ** 2))


def next_occupied(occupied: bool, target: float, rng: random.Random) -> bool:
    """One minute of a spot: a two-state chain whose stationary share of "occupied" is `target` and whose
    stays last MEAN_STAY_MIN minutes on average."""
    leave = 1.0 / MEAN_STAY_MIN
    arrive = leave * target / max(1e-6, 1.0 - target)
    return rng.random() >= leave if occupied else rng.random() < min(1.0, arrive)


def _sensor_sample(state: DeviceState, rng: random.Random) -> dict[str, float]:
    n = int(state.device_id.rsplit("-", 1)[1])
    segment, index, _ = spot_point(n)
    hour = local_hour()
    target = min(0.95, street_curve(hour) * segment.busyness)
    if "occupied" in state.values:
        occupied = next_occupied(state.values["occupied"] >= 0.5, target, rng)
    else:  # a fresh start begins at the curve, not with an empty street
        occupied = rng.random() < target
    # The first two spots of every segment are a loading bay: no parking from 22:00 to 06:00.
    loading_bay_closed = index < 2 and (hour >= 22 or hour < 6)
    return {
        "occupied": 1.0 if occupied else 0.0,
        "forbidden_parking": 1.0 if occupied and loading_bay_closed else 0.0,
        "battery_v": round(state.battery_v, 3),
    }


def behaviours() -> list[Behaviour]:
    """The `cityos.device_behaviours` entry point: one geomagnetic sensor per on-street spot."""
    from cityos.devices.v1 import devices_pb2
    from cityos_devices.simulator import Behaviour

    model = devices_pb2.DeviceModel(
        type="parking.sensor",
        vendor="CityOS Demo",
        display_name="Geomagnetic parking sensor (NB-IoT)",
        supported_commands=["reboot", "recalibrate"],
        metrics=[
            devices_pb2.MetricSpec(name="occupied", unit="1", min=0, max=1),
            devices_pb2.MetricSpec(name="forbidden_parking", unit="1", min=0, max=1),
            devices_pb2.MetricSpec(name="battery_v", unit="V", min=0, max=4.2),
        ],
        reporting_interval=duration_pb2.Duration(seconds=SENSOR_INTERVAL_S),
    )
    return [
        Behaviour(
            model_id=SENSOR_MODEL,
            model=model,
            prefix=SENSOR_PREFIX,
            owner_organization=OWNER,
            count=SENSOR_COUNT,
            psm_periodic_update_s=3600,
            tags=("demo", "parking"),
            place=lambda n, rng: spot_point(n)[2],
            sample=_sensor_sample,
        )
    ]


# -- seeding through the API ---------------------------------------------------------------------------


def _tariff(**fields: Any) -> parking_pb2.Tariff:
    return parking_pb2.Tariff(currency="CNY", time_zone="Asia/Shanghai", **fields)


STREET_TARIFF = _tariff(
    price_per_minute="0.05",
    free_minutes=15,
    daily_cap="60",
    maximum_stay=duration_pb2.Duration(seconds=2 * 3600),
    permits=[
        parking_pb2.PermitClass(
            name="resident",
            hours=[parking_pb2.WeeklyWindow(start="18:00", end="08:00")],
            price_per_minute="0",
        )
    ],
)
GARAGE_TARIFF = _tariff(
    price_per_minute="0.03",
    free_minutes=30,
    daily_cap="40",
    overnight=parking_pb2.Overnight(start="22:00", end="07:00", flat_fee="5"),
    opening_hours=[parking_pb2.WeeklyWindow(start="06:00", end="02:00")],
)


def _point(lat: float, lng: float) -> resources_pb2.GeoPoint:
    return resources_pb2.GeoPoint(latitude=lat, longitude=lng)


async def seed(channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]]) -> int:
    """Create the district's sites, groups and spots that do not exist yet; returns the spots in it."""
    parking = parking_pb2_grpc.ParkingServiceStub(channel)
    ownership = resources_pb2.Ownership(owner_organization=OWNER, operator_organization=OPERATOR)
    n = 0
    for segment in SEGMENTS:
        middle = spot_point(n + segment.spots // 2)[2]
        site = parking_pb2.Site(
            display_name=segment.display_name,
            kind=parking_pb2.SITE_KIND_ON_STREET,
            location=_point(*middle),
            ownership=ownership,
            detection_type=parking_pb2.DETECTION_TYPE_SINGLE_SPACE,
            allowed_vehicle_types=["car", "electric-vehicle", "van"],
            tariff=STREET_TARIFF,
        )
        request_site = parking_pb2.CreateSiteRequest(
            site=site, site_id=segment.site_id, request_id=f"demo-site-{segment.site_id}"
        )
        await create_or_keep(parking.CreateSite, request_site, metadata)
        halves = (f"{segment.site_id}-a", f"{segment.site_id}-b")
        for half, title in zip(halves, ("first half", "second half"), strict=True):
            group = parking_pb2.Group(
                display_name=f"{segment.display_name}, {title}",
                site=f"sites/{segment.site_id}",
                categories=["on-street"],
            )
            await create_or_keep(
                parking.CreateGroup,
                parking_pb2.CreateGroupRequest(group=group, group_id=half, request_id=f"demo-group-{half}"),
                metadata,
            )
        for index in range(segment.spots):
            _, _, point = spot_point(n)
            spot_id = f"{segment.site_id}-{index + 1:03d}"
            spot = parking_pb2.Spot(
                display_name=f"{index + 1:03d}",
                site=f"sites/{segment.site_id}",
                group=f"groups/{halves[0] if index < segment.spots // 2 else halves[1]}",
                location=_point(*point),
                sensor=f"devices/{SENSOR_PREFIX}-{n:04d}",
                width_m=2.5,
                length_m=6.0,
            )
            await create_or_keep(
                parking.CreateSpot,
                parking_pb2.CreateSpotRequest(spot=spot, spot_id=spot_id, request_id=f"demo-spot-{spot_id}"),
                metadata,
            )
            n += 1
    for garage in GARAGES:
        site = parking_pb2.Site(
            display_name=garage.display_name,
            kind=parking_pb2.SITE_KIND_OFF_STREET,
            location=_point(*garage.location),
            ownership=resources_pb2.Ownership(owner_organization=OPERATOR),
            detection_type=parking_pb2.DETECTION_TYPE_BALANCING,
            allowed_vehicle_types=["car", "electric-vehicle", "motorcycle"],
            tariff=GARAGE_TARIFF,
            capacity=garage.capacity,
        )
        await create_or_keep(
            parking.CreateSite,
            parking_pb2.CreateSiteRequest(
                site=site, site_id=garage.site_id, request_id=f"demo-site-{garage.site_id}"
            ),
            metadata,
        )
        for floor in garage.floors:
            group_id = f"{garage.site_id}-{floor}"
            group = parking_pb2.Group(
                display_name=f"{garage.display_name}, {floor.upper()}",
                site=f"sites/{garage.site_id}",
                categories=["off-street", f"floor-{floor}"],
            )
            await create_or_keep(
                parking.CreateGroup,
                parking_pb2.CreateGroupRequest(
                    group=group, group_id=group_id, request_id=f"demo-group-{group_id}"
                ),
                metadata,
            )
    return n


async def drive_gates(
    channel: grpc.aio.Channel,
    metadata: Sequence[tuple[str, str]],
    *,
    period_s: float,
    rng: random.Random,
    rounds: int | None = None,
) -> None:
    """Move each garage's gate counts towards its curve every `period_s`: the difference between the
    target and the site's current occupancy, passed through the gates in one batch with some noise."""
    availability = availability_pb2_grpc.AvailabilityServiceStub(channel)
    done = 0
    while rounds is None or done < rounds:
        for garage in GARAGES:
            site = f"sites/{garage.site_id}"
            try:
                now = await availability.GetSiteAvailability(
                    availability_pb2.GetSiteAvailabilityRequest(site=site), metadata=metadata, timeout=10
                )
                target = round(garage.capacity * garage_curve(local_hour(), garage.peak_hour))
                change = target - now.occupancy.occupied + round(rng.gauss(0, 2))
                if change:
                    await availability.RecordGatePassage(
                        availability_pb2.RecordGatePassageRequest(
                            site=site,
                            gate="main-entry" if change > 0 else "main-exit",
                            direction=(
                                availability_pb2.GATE_DIRECTION_ENTRY
                                if change > 0
                                else availability_pb2.GATE_DIRECTION_EXIT
                            ),
                            count=min(1000, abs(change)),
                        ),
                        metadata=metadata,
                        timeout=10,
                    )
            except grpc.aio.AioRpcError as error:
                log.warning("parking demo: the gates of %s could not report: %s", site, error.details())
        done += 1
        if rounds is None or done < rounds:
            await asyncio.sleep(period_s)


async def run_embedded(endpoints: dict[str, str], token: str, var_dir: Path, speedup: float) -> None:
    """The `cityos.simulators` entry point: seed the demo district, then keep the garages' gates busy."""
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(endpoints["parking"]) as channel:
        spots = await seed(channel, metadata)
        log.info("parking: the demo district is in place (%d sensor spots, %d garages)", spots, len(GARAGES))
        await drive_gates(channel, metadata, period_s=max(1.0, 300 / speedup), rng=random.Random(11))  # noqa: S311 (a simulation)
