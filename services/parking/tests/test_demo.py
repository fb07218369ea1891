"""The demo district of `cityos dev`: its layout, the sensors' daily curve, and seeding through the real
API (twice, as a restart does)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from cityos.parking.v1 import parking_pb2
from cityos_parking import demo
from cityos_platform.areas import AreaRegistry


def test_every_sensor_spot_stands_on_its_street_in_rongdong():
    rongdong = AreaRegistry.default().resolve("rongdong")
    points = [demo.spot_point(n)[2] for n in range(demo.SENSOR_COUNT)]
    assert len(set(points)) == demo.SENSOR_COUNT == 240
    assert all(rongdong.contains(lat, lng) for lat, lng in points)
    with pytest.raises(IndexError):
        demo.spot_point(demo.SENSOR_COUNT)


def test_the_street_curve_is_quiet_at_night_and_busy_at_late_morning():
    assert demo.street_curve(3.0) < 0.25
    assert demo.street_curve(10.5) > 0.65
    assert demo.street_curve(19.0) > 0.5
    assert all(0 < demo.street_curve(hour / 4) <= 0.95 for hour in range(96))


@pytest.mark.parametrize("target", [0.15, 0.5, 0.85])
def test_a_sensor_spends_the_target_share_of_its_minutes_occupied(target):
    rng, occupied, taken = random.Random(5), False, 0
    minutes = 200_000
    for _ in range(minutes):
        occupied = demo.next_occupied(occupied, target, rng)
        taken += occupied
    assert taken / minutes == pytest.approx(target, abs=0.03)


def test_sensor_readings_stay_within_the_model_ranges():
    from cityos_devices.simulator import DeviceState

    (behaviour,) = demo.behaviours()
    limits = {metric.name: (metric.min, metric.max) for metric in behaviour.model.metrics}
    state, rng = DeviceState("pk-0001", 39.0, 115.94), random.Random(1)
    for _ in range(500):
        values = behaviour.sample(state, rng)
        state.values.update(values)
        assert set(values) <= set(limits)
        assert all(limits[name][0] <= value <= limits[name][1] for name, value in values.items())
    assert behaviour.place(41, rng) == demo.spot_point(41)[2]


def test_loading_bays_flag_forbidden_parking_only_at_night(monkeypatch):
    from cityos_devices.simulator import DeviceState

    state = DeviceState("pk-0000", 39.0, 115.94, values={"occupied": 1.0})
    for hour, forbidden in ((23, 1.0), (12, 0.0)):
        monkeypatch.setattr(demo, "local_hour", lambda now=None, hour=hour: float(hour))
        monkeypatch.setattr(demo, "next_occupied", lambda occupied, target, rng: True)
        assert demo._sensor_sample(state, random.Random(0))["forbidden_parking"] == forbidden


async def test_seeding_builds_the_district_once(lot):
    admin = lot.token("users/sim", "city-office", "city-admin")
    assert await demo.seed(lot.channel, admin) == 240
    assert await demo.seed(lot.channel, admin) == 240  # a restart creates nothing twice
    sites = await lot.parking.ListSites(parking_pb2.ListSitesRequest(page_size=50), metadata=admin)
    by_id = {site.name.split("/")[1]: site for site in sites.sites}
    assert len(by_id) == len(demo.SEGMENTS) + len(demo.GARAGES)
    assert by_id["market-street"].total_spots == 40
    assert by_id["market-street"].ownership.operator_organization == "rongdong-parking"
    garage = by_id["station-garage"]
    assert (garage.kind, garage.capacity) == (parking_pb2.SITE_KIND_OFF_STREET, 400)
    assert garage.tariff.overnight.flat_fee == "5"
    spot = await lot.parking.GetSpot(
        parking_pb2.GetSpotRequest(name="spots/market-street-001"), metadata=admin
    )
    n = sum(segment.spots for segment in demo.SEGMENTS[:4])
    assert spot.sensor == f"devices/pk-{n:04d}"
    assert (spot.location.latitude, spot.location.longitude) == demo.spot_point(n)[2]


def test_local_hour_is_xiongan_time():
    assert demo.local_hour(datetime(2026, 11, 29, 16, 30, tzinfo=UTC)) == 0.5
