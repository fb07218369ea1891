"""Fixtures for the devices service: a running service on SQLite and on PostgreSQL, and clients."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import duration_pb2

from cityos.common.v1 import resources_pb2
from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices.app import DevicesApp
from cityos_platform.clock import ManualClock
from cityos_platform.config import load_settings
from cityos_platform.testing.fixtures import authenticator_for, bearer

CENTER = (39.0, 115.95)


class Fleet:
    """A running devices service and ready-made callers."""

    def __init__(self, server, app, channel, mint):
        self.server, self.app, self.channel, self._mint = server, app, channel, mint
        self.registry = devices_pb2_grpc.DeviceServiceStub(channel)
        self.telemetry = devices_pb2_grpc.TelemetryServiceStub(channel)
        self.operator = self.token("olga", "transport", "operator")
        self.other_org = self.token("uma", "utilities", "operator")
        self.service = self.token("parking-svc", "city", "service", kind="service")

    def token(self, subject, organization, *roles, **claims):
        return bearer(self._mint(subject, organization, list(roles), **claims))

    async def model(self, model_id="geomag-v2", **overrides) -> devices_pb2.DeviceModel:
        model = devices_pb2.DeviceModel(
            type="parking.sensor",
            vendor="Acme Sensors",
            display_name="Geomagnetic parking sensor v2",
            supported_commands=["reboot", "recalibrate"],
            metrics=[
                devices_pb2.MetricSpec(name="occupied", unit="1", min=0, max=1),
                devices_pb2.MetricSpec(name="battery_v", unit="V", min=0, max=4.2),
                devices_pb2.MetricSpec(name="temperature_c", unit="Cel"),
            ],
            reporting_interval=duration_pb2.Duration(seconds=600),
        )
        for key, value in overrides.items():
            if isinstance(value, list):  # repeated fields are replaced, not assigned
                del getattr(model, key)[:]
                getattr(model, key).extend(value)
            else:
                setattr(model, key, value)
        return await self.registry.CreateDeviceModel(
            devices_pb2.CreateDeviceModelRequest(device_model=model, device_model_id=model_id),
            metadata=self.operator,
            timeout=10,
        )

    async def device(
        self,
        device_id,
        *,
        model="deviceModels/geomag-v2",
        who=None,
        lat=CENTER[0],
        lng=CENTER[1],
        radio=devices_pb2.RADIO_TYPE_NB_IOT,
        sst=1,
        sd="000001",
        tags=(),
        psm_s=0,
    ):
        subscription = devices_pb2.Subscription(
            iccid="8986001234567890123",
            supi="460001234567890",
            imei="490154203237518",
            plmn="46000",
            radio_type=radio,
            slice=devices_pb2.Snssai(sst=sst, sd=sd),
            dnn="iot.cityos",
        )
        if psm_s:
            subscription.psm_periodic_update.FromSeconds(psm_s)
        device = devices_pb2.Device(
            model=model,
            serial_number=f"SN-{device_id}",
            firmware_version="1.4.2",
            tags=list(tags),
            location=resources_pb2.GeoPoint(latitude=lat, longitude=lng),
            subscription=subscription,
        )
        return await self.registry.CreateDevice(
            devices_pb2.CreateDeviceRequest(device=device, device_id=device_id),
            metadata=who or self.operator,
            timeout=10,
        )

    async def device_token(self, device_id) -> tuple:
        issued = await self.registry.IssueDeviceToken(
            devices_pb2.IssueDeviceTokenRequest(device=f"devices/{device_id}"),
            metadata=self.operator,
            timeout=10,
        )
        return bearer(issued.token)


@pytest.fixture
def clock():
    """The devices service's clock: starts at the real time and moves only when a test moves it."""
    return ManualClock(datetime.now(UTC))


@pytest.fixture
async def fleet(start_server, database_url, dev_issuer, mint, tmp_path, clock):
    app = DevicesApp(
        load_settings(var_dir=tmp_path, events_poll_interval_s=0.1),
        database_url=database_url,
        clock=clock,
        run_jobs=False,
    )
    mounts = await app.start()
    authenticator = authenticator_for(dev_issuer)
    authenticator.prefixed = app.token_verifiers
    server = await start_server(mounts, authenticator=authenticator)
    channel = grpc.aio.insecure_channel(server.address)
    yield Fleet(server, app, channel, mint)
    await channel.close()
    await app.stop()
