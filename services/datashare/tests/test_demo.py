"""The embedded city's demo seed: open data published and the dashboard agreement approved on narrower
terms — and a second run (a restart of the city, a day later) changes nothing."""

from __future__ import annotations

from datetime import timedelta

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_datashare.demo import seed


async def test_the_demo_seed_is_idempotent(share):
    admin = share.token("users/simulator", "city-office", "city-admin")
    first = await seed(share.channel, admin, now=share.clock.now())
    assert first.state == pb.AGREEMENT_STATE_APPROVED
    assert list(first.terms.columns) == ["site", "status", "time", "area_cell"]
    again = await seed(share.channel, admin, now=share.clock.now() + timedelta(days=1))
    assert again.name == first.name
    assert len(again.history) == 2
    published = await share.open_data.ListOpenDatasets(pb.ListOpenDatasetsRequest())
    assert {d.dataset_id for d in published.datasets} == {"parking_occupancy", "device_telemetry"}
    rows, _ = await share.query(pb.QueryRequest(agreement=first.name), metadata=admin)
    assert rows.column_names == ["site", "status", "time", "area_cell"]
