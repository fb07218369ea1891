"""MQTT ingress: broker credentials and ACLs per device, and the adapter that feeds the ingest path.

Contract (docs/services/devices.md):
- a device connects with username = its device id and password = one of its device tokens (the
  credential travels in CONNECT, never in a payload);
- it may publish only `cityos/v1/devices/{its id}/up` and subscribe only `cityos/v1/devices/{its id}/down`
  — enforced by the broker (Mosquitto's dynamic-security plugin), which the platform provisions when it
  issues or revokes the device's credentials;
- an uplink is the JSON form of `ReportRequest` (its `device` field, if any, must be the topic's);
  the adapter runs it through the same `Ingestor.ingest()` as `Report` and publishes, on the device's
  down topic, `{"ack": ReportResponse}` (with the commands it delivered) or `{"error": {...}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from google.protobuf import json_format

from cityos.devices.v1 import devices_pb2
from cityos_devices.telemetry import Ingestor
from cityos_platform.errors import CityOSError

log = logging.getLogger(__name__)

CONTROL = "$CONTROL/dynamic-security/v1"
UP = "cityos/v1/devices/{device}/up"
DOWN = "cityos/v1/devices/{device}/down"
ADAPTER_USERNAME = "cityos-devices-adapter"
ADMIN_TIMEOUT_S = 10.0


class BrokerError(Exception):
    """The broker refused an administrative command."""


def _endpoint(url: str) -> tuple[str, int, str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError("the MQTT URL must look like mqtt://admin:password@host:1883")
    return parts.hostname, parts.port or 1883, unquote(parts.username or ""), unquote(parts.password or "")


class BrokerAdmin:
    """Per-device broker credentials and ACLs through Mosquitto's dynamic-security control topic."""

    def __init__(self, url: str) -> None:
        self.host, self.port, self.username, self.password = _endpoint(url)

    async def run(
        self, commands: Sequence[dict[str, Any]], tolerate: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Send commands; raise BrokerError on an error response unless its text is in `tolerate`."""
        async with aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=f"cityos-admin-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:
            await client.subscribe(f"{CONTROL}/response", qos=1)
            await client.publish(CONTROL, json.dumps({"commands": list(commands)}), qos=1)
            async with asyncio.timeout(ADMIN_TIMEOUT_S):
                async for message in client.messages:
                    responses: list[dict[str, Any]] = json.loads(bytes(message.payload))["responses"]
                    break
        for response in responses:
            error = response.get("error")
            if error and error not in tolerate:
                raise BrokerError(f"{response.get('command')}: {error}")
        return responses

    async def provision_device(self, device_id: str, password: str) -> None:
        """Create (or re-key) the device's broker client, allowed its own two topics only."""
        role = f"device-{device_id}"
        up, down = UP.format(device=device_id), DOWN.format(device=device_id)
        await self.run(
            [
                {
                    "command": "createRole",
                    "rolename": role,
                    "acls": [
                        {"acltype": "publishClientSend", "topic": up, "allow": True},
                        {"acltype": "subscribePattern", "topic": down, "allow": True},
                        {"acltype": "publishClientReceive", "topic": down, "allow": True},
                    ],
                },
                {
                    "command": "createClient",
                    "username": device_id,
                    "password": password,
                    "roles": [{"rolename": role}],
                },
                {"command": "setClientPassword", "username": device_id, "password": password},
                {"command": "enableClient", "username": device_id},
            ],
            tolerate=("Role already exists", "Client already exists"),
        )

    async def revoke_device(self, device_id: str) -> None:
        """Remove the device's broker client (its open connection is dropped by the broker)."""
        await self.run(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": f"device-{device_id}"},
            ],
            tolerate=("Client not found", "Role not found"),
        )

    async def provision_adapter(self) -> str:
        """The adapter's own client: read every device's up topic, write every down topic. A fresh
        password per start; returns it."""
        password = secrets.token_urlsafe(24)
        await self.run(
            [
                {
                    "command": "createRole",
                    "rolename": "cityos-devices-adapter",
                    "acls": [
                        {"acltype": "subscribePattern", "topic": UP.format(device="+"), "allow": True},
                        {"acltype": "publishClientReceive", "topic": UP.format(device="+"), "allow": True},
                        {"acltype": "publishClientSend", "topic": DOWN.format(device="+"), "allow": True},
                    ],
                },
                {
                    "command": "createClient",
                    "username": ADAPTER_USERNAME,
                    "password": password,
                    "roles": [{"rolename": "cityos-devices-adapter"}],
                },
                {"command": "setClientPassword", "username": ADAPTER_USERNAME, "password": password},
            ],
            tolerate=("Role already exists", "Client already exists"),
        )
        return password


class MqttAdapter:
    """Subscribes to every device's uplinks and runs them through the ingest path; answers downlink."""

    def __init__(self, url: str, admin: BrokerAdmin, ingestor: Ingestor) -> None:
        self.host, self.port, _, _ = _endpoint(url)
        self.admin = admin
        self.ingestor = ingestor
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                password = await self.admin.provision_adapter()
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    username=ADAPTER_USERNAME,
                    password=password,
                    identifier=f"{ADAPTER_USERNAME}-{uuid.uuid4().hex[:8]}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                ) as client:
                    await client.subscribe(UP.format(device="+"), qos=1)
                    self.ready.set()
                    delay = 0.5
                    async for message in client.messages:
                        await self._handle(client, str(message.topic), bytes(message.payload))
            except (aiomqtt.MqttError, BrokerError, OSError, TimeoutError) as error:
                self.ready.clear()
                log.warning("MQTT adapter: %s; reconnecting in %.1f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        device_id = topic.split("/")[3]  # the broker let only this device publish here
        await client.publish(
            DOWN.format(device=device_id), json.dumps(await self.answer(device_id, payload)), qos=1
        )

    async def answer(self, device_id: str, payload: bytes) -> dict[str, Any]:
        """Ingest one uplink; the message for the device's down topic."""
        try:
            request = json_format.Parse(payload, devices_pb2.ReportRequest())
        except json_format.ParseError as error:
            return {
                "error": {"reason": "PAYLOAD_INVALID", "message": f"not a ReportRequest in JSON: {error}"}
            }
        if request.device and request.device != f"devices/{device_id}":
            return {"error": {"reason": "DEVICE_MISMATCH", "message": "a device reports only for itself"}}
        radio = request.radio if request.HasField("radio") else None
        try:
            response = await self.ingestor.ingest(device_id, request.readings, radio)
        except CityOSError as error:
            return {"error": {"reason": error.reason, "message": error.message}}
        except Exception:
            log.exception("MQTT uplink of %s failed", device_id)
            return {"error": {"reason": "INTERNAL", "message": "the uplink was not stored; send it again"}}
        return {"ack": json_format.MessageToDict(response, preserving_proto_field_name=True)}
