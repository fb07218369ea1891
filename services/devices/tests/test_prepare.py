"""The ingest validation's fast path (`Ingestor.prepare`) against the reference rules
(`domain.reading_problem`): the same readings are refused, for the same reasons, and the rows kept are
exactly the valid ones, with their values as valid JSON."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from cityos.devices.v1 import devices_pb2
from cityos_devices import domain
from cityos_devices.telemetry import FLOAT_MAX, Ingestor, Profile

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SPECS = {
    "occupied": {"name": "occupied", "unit": "1", "min": 0.0, "max": 1.0},
    "battery_v": {"name": "battery_v", "unit": "V", "min": 0.0, "max": 4.2},
    "temperature_c": {"name": "temperature_c", "unit": "Cel", "min": None, "max": None},
}
PROFILE = Profile(
    device_id="pk-1",
    type="parking.sensor",
    owner_organization="transport",
    operator_organization="",
    area_cell="8931aa3b2d7ffff",
    decommissioned=False,
    specs=SPECS,
    bounds={
        name: (-FLOAT_MAX if s["min"] is None else s["min"], FLOAT_MAX if s["max"] is None else s["max"])
        for name, s in SPECS.items()
    },
)


def _reading(sequence: int, at: datetime | None = NOW, **values: float) -> devices_pb2.Reading:
    reading = devices_pb2.Reading(sequence=sequence, values=values)
    if at is not None:
        reading.time.FromDatetime(at)
    return reading


EDGE_CASES = [
    _reading(1, occupied=1.0),
    _reading(2, occupied=0.0, battery_v=4.2, temperature_c=-40.5),
    _reading(3, occupied=1.0000001),
    _reading(4, battery_v=-0.0),
    _reading(5, temperature_c=math.inf),
    _reading(6, temperature_c=-math.inf),
    _reading(7, temperature_c=math.nan),
    _reading(8, occupied=math.nan),
    _reading(9, temperature_c=1e308),
    _reading(10, humidity=3.0),
    _reading(11),
    _reading(12, at=None, occupied=1.0),
    _reading(13, at=NOW + timedelta(seconds=domain.FUTURE_TOLERANCE_S + 1), occupied=1.0),
    _reading(14, at=NOW + timedelta(seconds=domain.FUTURE_TOLERANCE_S - 1), occupied=1.0),
    _reading(15, at=NOW - timedelta(seconds=domain.MAX_AGE_S + 1), occupied=1.0),
    _reading(16, at=NOW - timedelta(seconds=domain.MAX_AGE_S - 1), occupied=1.0),
    _reading(2**63, occupied=1.0),
    _reading(2**63 - 1, occupied=1.0, temperature_c=2.5e-7),
    _reading(1, occupied=0.0),  # a duplicate of the first, within the batch
]


@pytest.mark.req("DEV-6")
def test_the_fast_path_refuses_exactly_what_the_rules_refuse_and_says_why():
    prepared = Ingestor(db=None).prepare(PROFILE, EDGE_CASES, NOW)  # type: ignore[arg-type]
    expected = {}
    for index, reading in enumerate(EDGE_CASES):
        problem = domain.reading_problem(reading, index, SPECS, NOW)
        if problem is not None:
            expected[index] = problem
    assert {r.index: (r.field, r.reason) for r in prepared.rejected} == expected
    assert sorted(expected) == [2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 16]
    rows = prepared.rows()
    kept = [row[1] for row in rows]
    assert kept == [1, 2, 4, 9, 14, 16, 2**63 - 1]
    assert prepared.duplicates == 1
    for row in rows:
        assert row[0] == "pk-1"
        assert row[4:7] == ("parking.sensor", "transport", "8931aa3b2d7ffff")
        assert row[7] == NOW
        values = json.loads(row[3])
        original = next(r for r in EDGE_CASES if r.sequence == row[1])
        assert values == dict(original.values)


def test_the_twin_gets_each_metrics_newest_value_whatever_the_order():
    late = NOW - timedelta(minutes=5)
    readings = [
        _reading(3, at=NOW, occupied=1.0),
        _reading(1, at=late, occupied=0.0, battery_v=3.9),
        _reading(2, at=late + timedelta(minutes=1), battery_v=3.8),
    ]
    prepared = Ingestor(db=None).prepare(PROFILE, readings, NOW)  # type: ignore[arg-type]
    assert prepared.latest == {
        "occupied": (NOW, 1.0),
        "battery_v": (late + timedelta(minutes=1), 3.8),
    }
