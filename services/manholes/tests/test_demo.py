"""The demo covers of `cityos dev`: where they are, what their terminals report, and seeding through the
real API (twice, as a restart does)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

from cityos.manholes.v1 import manholes_pb2
from cityos_manholes import demo
from cityos_platform.areas import AreaRegistry


def test_every_cover_lies_in_the_demo_district_with_its_kind_share():
    city = AreaRegistry.default().resolve("city")
    points = [demo.cover_point(n) for n in range(demo.COUNT)]
    assert len(set(points)) == demo.COUNT
    inside = sum(city.contains(lat, lng) for lat, lng in points)
    assert inside >= 0.9 * demo.COUNT  # the bounding box is a little larger than the polygon
    kinds = Counter(demo.cover_kind(n)[0] for n in range(demo.COUNT))
    for kind, _, share in demo.KINDS:
        assert abs(kinds[kind] - share * demo.COUNT) <= 1


def test_terminal_readings_stay_within_the_model_and_incidents_cross_the_lines():
    from cityos_devices.simulator import DeviceState

    (behaviour,) = demo.behaviours()
    limits = {metric.name: (metric.min, metric.max) for metric in behaviour.model.metrics}
    rng = random.Random(3)
    for n in range(demo.COUNT):
        state = DeviceState(f"mh-{n:04d}", *demo.cover_point(n))
        for _ in range(20):
            values = behaviour.sample(state, rng)
            state.values.update(values)
            assert set(values) <= set(limits)
            assert all(limits[name][0] <= value <= limits[name][1] for name, value in values.items())
    demo._INCIDENTS["mh-0000"] = ("theft", 3)
    stolen = behaviour.sample(DeviceState("mh-0000", 39.0, 115.9), rng)
    assert (stolen["open"], stolen["displaced"]) == (1.0, 1.0)
    assert stolen["tilt_deg"] - demo.install_angle(0) >= 35
    gas_cover = next(n for n in range(demo.COUNT) if demo.cover_kind(n)[0] == manholes_pb2.COVER_KIND_GAS)
    demo._INCIDENTS[f"mh-{gas_cover:04d}"] = ("gas", 4)
    leaking = behaviour.sample(DeviceState(f"mh-{gas_cover:04d}", 39.0, 115.9), rng)
    assert leaking["ch4_pct_lel"] > 20  # past the default threshold
    demo._INCIDENTS.clear()


def test_storms_come_every_third_hour_for_ten_minutes():
    assert demo.storm(datetime(2026, 11, 29, 16, 5, tzinfo=UTC))  # 00:05 in Xiong'an
    assert not demo.storm(datetime(2026, 11, 29, 16, 15, tzinfo=UTC))
    assert not demo.storm(datetime(2026, 11, 29, 17, 5, tzinfo=UTC))


async def test_seeding_creates_the_covers_once(street):
    admin = street.token("users/sim", "city-office", "city-admin")
    assert await demo.seed(street.channel, admin) == demo.COUNT
    assert await demo.seed(street.channel, admin) == demo.COUNT
    seen, token = [], ""
    while True:
        page = await street.covers.ListCovers(
            manholes_pb2.ListCoversRequest(page_size=500, page_token=token), metadata=admin
        )
        seen += page.covers
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == demo.COUNT
    storm_drains = [cover for cover in seen if cover.kind == manholes_pb2.COVER_KIND_STORM_WATER]
    assert storm_drains
    assert all(cover.thresholds.water_level_m == demo.STORM_LINE_M for cover in storm_drains)
    assert {cover.device for cover in seen} == {f"devices/mh-{n:04d}" for n in range(demo.COUNT)}
