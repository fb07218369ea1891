"""DSH-7: the analytics jobs' declared outputs, the services' lake tables and the live NGSI-LD views are
in the catalog as soon as the service starts, with owner, schema and classification from their
declarations — no manual step; and the catalog API around them (search, registration, who may change
what)."""

from __future__ import annotations

import grpc
import pytest

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_datashare.live import LIVE_VIEWS
from cityos_platform.lake.tables import REGISTRY, output_tables
from cityos_platform.testing.status import field_violations


async def all_datasets(share, **filters) -> list[pb.Dataset]:  # type: ignore[no-untyped-def]
    found, token = [], ""
    while True:
        page = await share.catalog.ListDatasets(
            pb.ListDatasetsRequest(page_size=7, page_token=token, **filters)
        )
        found += list(page.datasets)
        token = page.next_page_token
        if not token:
            return found


@pytest.mark.req("DSH-7")
async def test_lake_tables_job_outputs_and_live_views_are_registered_at_start(share):
    outputs = output_tables()
    assert {"parking_occupancy_forecast", "manhole_risk_scores", "device_anomalies"} <= set(outputs)
    datasets = {d.dataset_id: d for d in await all_datasets(share)}  # anonymous: the catalog is public
    assert set(REGISTRY) | set(outputs) | {view.dataset_id for view in LIVE_VIEWS} == set(datasets)
    forecast = datasets["parking_occupancy_forecast"]
    assert forecast.kind == pb.DATASET_KIND_LAKE_TABLE
    assert forecast.owner_organization == "transport"
    assert forecast.source == "analytics: job parking-forecast"
    assert forecast.update_frequency == "per job run"
    spec = outputs["parking_occupancy_forecast"]
    assert [f.name for f in forecast.fields] == spec.schema.names
    classes = {f.name: f.classification for f in datasets["parking_events"].fields}
    assert classes["plate_pseudonym"] == pb.CLASSIFICATION_PERSONAL
    assert classes["event_id"] == pb.CLASSIFICATION_INTERNAL
    risk = {f.name: f.classification for f in datasets["manhole_risk_scores"].fields}
    assert risk["score"] == pb.CLASSIFICATION_SENSITIVE
    assert datasets["parking_occupancy"].data_model == "ParkingSpot"
    assert datasets["parking_occupancy"].area_column == "area_cell"
    spot = datasets["ngsi-ld.ParkingSpot"]
    assert spot.kind == pb.DATASET_KIND_LIVE_VIEW
    assert spot.data_model == "ParkingSpot"
    assert await share.catalog.GetDataset(pb.GetDatasetRequest(name=spot.name)) == spot


@pytest.mark.req("DSH-7")
async def test_a_restart_refreshes_declared_entries_and_keeps_what_the_api_added(share):
    from cityos_datashare.catalog import sync_registry
    from cityos_platform.lake.tables import all_tables

    await share.catalog.PublishOpenData(
        pb.PublishOpenDataRequest(
            name="datasets/parking_occupancy", publication=pb.OpenDataPublication(columns=["site"])
        ),
        metadata=share.owner,
    )
    added, updated = await sync_registry(share.app.db, all_tables().values(), LIVE_VIEWS)
    assert (added, updated) == (0, 0)
    again = await share.catalog.GetDataset(pb.GetDatasetRequest(name="datasets/parking_occupancy"))
    assert list(again.open_data.columns) == ["site"]


async def test_search_and_filters(share):
    parking = await all_datasets(share, query="parking occupancy")
    assert {d.dataset_id for d in parking} >= {"parking_occupancy", "parking_occupancy_forecast"}
    assert all("occupancy" in (d.dataset_id + d.display_name + d.description).lower() for d in parking)
    owned = await all_datasets(share, owner_organization="utilities")
    assert {d.owner_organization for d in owned} == {"utilities"}
    views = await all_datasets(share, kind=pb.DATASET_KIND_LIVE_VIEW)
    assert {d.dataset_id for d in views} == {view.dataset_id for view in LIVE_VIEWS}


async def test_registration_by_the_owner_and_refusals(share):
    dataset = pb.Dataset(
        dataset_id="bus_stop_counts",
        display_name="Bus stop passenger counts",
        kind=pb.DATASET_KIND_LAKE_TABLE,
        fields=[
            pb.DatasetField(name="stop", type="string", classification=pb.CLASSIFICATION_PUBLIC),
            pb.DatasetField(
                name="time", type="timestamp[us, tz=UTC]", classification=pb.CLASSIFICATION_PUBLIC
            ),
        ],
        time_column="time",
        licence="CC-BY-4.0",
    )
    created = await share.catalog.RegisterDataset(
        pb.RegisterDatasetRequest(dataset=dataset), metadata=share.owner
    )
    assert created.owner_organization == "transport"
    dataset.data_update_time.GetCurrentTime()
    refreshed = await share.catalog.RegisterDataset(
        pb.RegisterDatasetRequest(dataset=dataset), metadata=share.owner
    )
    assert refreshed.data_update_time.seconds == dataset.data_update_time.seconds
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await share.catalog.RegisterDataset(
            pb.RegisterDatasetRequest(dataset=dataset), metadata=share.stranger
        )
    assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
    bad = pb.Dataset(dataset_id="Bad Id", fields=[pb.DatasetField(name="x"), pb.DatasetField(name="x")])
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await share.catalog.RegisterDataset(pb.RegisterDatasetRequest(dataset=bad), metadata=share.owner)
    assert {"dataset.dataset_id", "dataset.display_name", "dataset.kind", "dataset.fields"} <= {
        field for field, _ in field_violations(invalid.value)
    }
