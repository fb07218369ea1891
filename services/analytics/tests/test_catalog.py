"""DSH-7 (the analytics side): a run registers the outputs it wrote in a running datashare's catalog,
with the time of their data, as the client cityos-analytics — and a run that cannot reach datashare
still succeeds and says so."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_analytics.runner import run_job
from cityos_analytics.services import Services
from cityos_datashare.testing import DAY, Share, fill, running_share
from cityos_platform.lake import Lake

FORECAST = "parking_occupancy_forecast"


@pytest.mark.req("DSH-7")
@pytest.mark.slow
async def test_a_run_registers_its_outputs_with_their_data_time(
    start_server, dev_issuer, mint, tmp_path, ray_local
):  # type: ignore[no-untyped-def]
    from cityos_platform.clock import ManualClock

    lake = Lake.local(tmp_path / "lake")
    fill(lake)
    clock = ManualClock(DAY + timedelta(days=3))
    url = f"sqlite+aiosqlite:///{tmp_path / 'datashare.sqlite'}"
    app, server, channel = await running_share(start_server, dev_issuer, mint, tmp_path, clock, url, lake)
    share = Share(app, channel, mint, clock)
    try:
        before = await share.catalog.GetDataset(pb.GetDatasetRequest(name=f"datasets/{FORECAST}"))
        assert not before.HasField("data_update_time")  # registered at start, no data yet
        token = mint("service-account-cityos-analytics", "city", ["service"], client="cityos-analytics")
        services = Services.with_token({"datashare": server.address}, token)
        end = DAY + timedelta(days=2)
        result = await asyncio.to_thread(run_job, "parking-forecast", DAY, end, lake=lake, services=services)
        assert result.published["catalog"] == {
            "registered": [f"datasets/{name}" for name, paths in result.files.items() if paths]
        }
        after = await share.catalog.GetDataset(pb.GetDatasetRequest(name=f"datasets/{FORECAST}"))
        assert after.data_update_time.ToDatetime().isoformat() == end.replace(tzinfo=None).isoformat()
        assert after.owner_organization == "transport"
        # The datashare stops: the next run still writes its outputs and reports the failure.
        await server.stop(grace=0)
        again = await asyncio.to_thread(run_job, "parking-forecast", DAY, end, lake=lake, services=services)
        assert again.rows == result.rows
        assert "UNAVAILABLE" in again.published["catalog"]["error"]
    finally:
        await channel.close()
        await app.stop()
