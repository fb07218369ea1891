"""MQTT ingress through a private Mosquitto: the broker's per-device ACL (DEV-2) and uplinks reaching the
telemetry feed, commands reaching the device's down topic (DEV-8)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import aiomqtt
import grpc
import pytest
from google.protobuf import duration_pb2

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices.app import DevicesApp
from cityos_devices.settings import DevicesSettings
from cityos_platform.config import load_settings
from cityos_platform.testing.fixtures import authenticator_for
from services.devices.tests.conftest import Fleet


@pytest.fixture
async def mqtt_fleet(start_server, database_url, dev_issuer, mint, tmp_path, clock, mosquitto):
    app = DevicesApp(
        load_settings(var_dir=tmp_path, events_poll_interval_s=0.1),
        database_url=database_url,
        clock=clock,
        run_jobs=False,
        devices_settings=DevicesSettings(mqtt_url=mosquitto),
    )
    mounts = await app.start()
    authenticator = authenticator_for(dev_issuer)
    authenticator.prefixed = app.token_verifiers
    server = await start_server(mounts, authenticator=authenticator)
    channel = grpc.aio.insecure_channel(server.address)
    await asyncio.wait_for(app.adapter.ready.wait(), 10)
    fleet = Fleet(server, app, channel, mint)
    fleet.broker = mosquitto
    yield fleet
    await channel.close()
    await app.stop()


def device_client(fleet, device_id: str, token: str) -> aiomqtt.Client:
    from urllib.parse import urlsplit

    broker = urlsplit(fleet.broker)
    return aiomqtt.Client(
        broker.hostname, broker.port, username=device_id, password=token, protocol=aiomqtt.ProtocolVersion.V5
    )


async def issue(fleet, device_id: str) -> str:
    issued = await fleet.registry.IssueDeviceToken(
        devices_pb2.IssueDeviceTokenRequest(device=f"devices/{device_id}"), metadata=fleet.operator
    )
    return issued.token


def uplink(sequence: int, **extra) -> str:
    return json.dumps(
        {
            "readings": [
                {"sequence": sequence, "time": datetime.now(UTC).isoformat(), "values": {"occupied": 1}}
            ],
            **extra,
        }
    )


async def next_message(client: aiomqtt.Client, timeout: float = 10) -> dict:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            return json.loads(bytes(message.payload))
    raise AssertionError("no message")


async def feed(fleet) -> list[tuple[str, int]]:
    records = []
    async for batch in fleet.telemetry.SubscribeTelemetry(
        devices_pb2.SubscribeTelemetryRequest(follow=False), metadata=fleet.service, timeout=10
    ):
        records += [(r.device, r.reading.sequence) for r in batch.records]
    return records


@pytest.mark.slow
@pytest.mark.req("DEV-8")
async def test_mqtt_uplinks_reach_the_feed_and_commands_reach_the_down_topic(mqtt_fleet):
    fleet = mqtt_fleet
    await fleet.model()
    await fleet.device("pk-1", psm_s=3600)
    token = await issue(fleet, "pk-1")
    async with device_client(fleet, "pk-1", token) as device:
        granted = await device.subscribe("cityos/v1/devices/pk-1/down", qos=1)
        assert "Granted" in str(granted[0])
        await device.publish("cityos/v1/devices/pk-1/up", uplink(1), qos=1)
        answer = await next_message(device)
        assert answer["ack"]["accepted"] == 1
        assert await feed(fleet) == [("devices/pk-1", 1)]

        await devices_pb2_grpc.CommandServiceStub(fleet.channel).SendCommand(
            devices_pb2.SendCommandRequest(
                device="devices/pk-1", command="reboot", ttl=duration_pb2.Duration(seconds=600)
            ),
            metadata=fleet.operator,
        )
        await device.publish("cityos/v1/devices/pk-1/up", uplink(2, radio={"rsrp_dbm": -117}), qos=1)
        answer = await next_message(device)
        assert [c["command"] for c in answer["ack"]["commands"]] == ["reboot"]
        await device.publish("cityos/v1/devices/pk-1/up", b"not json", qos=1)
        assert (await next_message(device))["error"]["reason"] == "PAYLOAD_INVALID"
    got = await fleet.registry.GetDevice(
        devices_pb2.GetDeviceRequest(name="devices/pk-1"), metadata=fleet.operator
    )
    assert got.last_radio.rsrp_dbm == -117


@pytest.mark.slow
@pytest.mark.req("DEV-2")
async def test_over_mqtt_a_device_cannot_publish_or_listen_as_another(mqtt_fleet):
    fleet = mqtt_fleet
    await fleet.model()
    await fleet.device("pk-a")
    await fleet.device("pk-b")
    token_a = await issue(fleet, "pk-a")
    async with device_client(fleet, "pk-a", token_a) as device_a:
        refused = await device_a.subscribe("cityos/v1/devices/pk-b/down", qos=1)
        assert "Not authorized" in str(refused[0])
        await device_a.publish("cityos/v1/devices/pk-b/up", uplink(1), qos=1)  # the broker drops it
        await device_a.subscribe("cityos/v1/devices/pk-a/down", qos=1)
        await device_a.publish("cityos/v1/devices/pk-a/up", uplink(7), qos=1)
        assert (await next_message(device_a))["ack"]["accepted"] == 1  # its own uplink, handled after
    assert await feed(fleet) == [("devices/pk-a", 7)]  # nothing was written as pk-b
    # Credentials are per device: A's token is not B's password, and a revoked device cannot connect.
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(fleet, "pk-b", token_a):
            pass
    await fleet.registry.RevokeDeviceCredentials(
        devices_pb2.RevokeDeviceCredentialsRequest(device="devices/pk-a"), metadata=fleet.operator
    )
    with pytest.raises(aiomqtt.MqttError):
        async with device_client(fleet, "pk-a", token_a):
            pass
