"""What the devices service shows the cross-service tenancy check (`cityos_platform.testing.tenancy`):
organization B's fleet — a model, a device with a reading, a command, a job — and a request about it
for every RPC, or why organization scoping does not apply to the RPC."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2

from cityos.common.v1 import events_pb2, resources_pb2
from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_platform.testing.tenancy import TenancyCase, TenancyExamples, TokenFor

SERVICE = "/cityos.devices.v1."
CATALOG = "device models and their firmware lists are a city-wide catalog every organization reads"
DEVICE_ONLY = (
    "called by a device as itself only: a credential of device A can never act as device B (DEV-2, "
    "test_telemetry.py and test_mqtt.py)"
)
EXEMPT = {
    SERVICE + "DeviceService/CreateDeviceModel": CATALOG + " (and a model is created, not reached)",
    SERVICE + "DeviceService/GetDeviceModel": CATALOG,
    SERVICE + "DeviceService/ListDeviceModels": CATALOG,
    SERVICE + "JobService/ListFirmwareImages": CATALOG,
    SERVICE + "TelemetryService/Report": DEVICE_ONLY,
    SERVICE + "TelemetryService/Connect": DEVICE_ONLY,
    SERVICE + "CommandService/AckCommand": DEVICE_ONLY,
    SERVICE + "TelemetryService/Ingest": (
        "a client stream whose refusals are inside each ack: another organization's device is rejected "
        "as 'no such device' (test_telemetry.py::test_ingest_acks_each_batch_once_durable_and_reports_"
        "rejections)"
    ),
}


def _csr(device_id: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def _device(owner: str) -> devices_pb2.Device:
    return devices_pb2.Device(
        model="deviceModels/tenancy-sensor",
        location=resources_pb2.GeoPoint(latitude=39.05, longitude=115.95),
        ownership=resources_pb2.Ownership(owner_organization=owner),
    )


async def seed(channel: grpc.aio.Channel, token: TokenFor, organization: str) -> TenancyCase:
    owner = token(organization, ["org-admin", "operator"])
    registry = devices_pb2_grpc.DeviceServiceStub(channel)
    telemetry = devices_pb2_grpc.TelemetryServiceStub(channel)
    commands = devices_pb2_grpc.CommandServiceStub(channel)
    jobs = devices_pb2_grpc.JobServiceStub(channel)
    await registry.CreateDeviceModel(
        devices_pb2.CreateDeviceModelRequest(
            device_model=devices_pb2.DeviceModel(
                type="tenancy.sensor",
                vendor="Acme",
                supported_commands=["reboot"],
                metrics=[devices_pb2.MetricSpec(name="occupied", unit="1", min=0, max=1)],
                reporting_interval=duration_pb2.Duration(seconds=600),
            ),
            device_model_id="tenancy-sensor",
        ),
        metadata=owner,
    )
    await registry.CreateDevice(
        devices_pb2.CreateDeviceRequest(device=_device(organization), device_id="b-sensor"), metadata=owner
    )
    device_token = await registry.IssueDeviceToken(
        devices_pb2.IssueDeviceTokenRequest(device="devices/b-sensor"), metadata=owner
    )
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    await telemetry.Report(
        devices_pb2.ReportRequest(
            device="devices/b-sensor",
            readings=[devices_pb2.Reading(sequence=1, time=stamp, values={"occupied": 1.0})],
        ),
        metadata=(("authorization", f"Bearer {device_token.token}"),),
    )
    command = await commands.SendCommand(
        devices_pb2.SendCommandRequest(
            device="devices/b-sensor", command="reboot", ttl=duration_pb2.Duration(seconds=3600)
        ),
        metadata=owner,
    )
    job = devices_pb2.Job(
        command="reboot",
        command_ttl=duration_pb2.Duration(seconds=3600),
        target=devices_pb2.JobTarget(devices=["devices/b-sensor"]),
    )
    await jobs.CreateJob(devices_pb2.CreateJobRequest(job=job, job_id="b-job"), metadata=owner)

    patch = struct_pb2.Struct()
    patch.update({"mode": "eco"})
    firmware = devices_pb2.FirmwareImage(
        version="2.0.0", package_uri="https://firmware.example/2.0.0.bin", sha256="a" * 64, size_bytes=1024
    )
    case = TenancyCase(names=["b-sensor", "b-job", command.name])
    add = case.requests.__setitem__
    add(SERVICE + "DeviceService/GetDevice", devices_pb2.GetDeviceRequest(name="devices/b-sensor"))
    add(SERVICE + "DeviceService/ListDevices", devices_pb2.ListDevicesRequest())
    add(
        SERVICE + "DeviceService/GetFleetStatistics",
        devices_pb2.GetFleetStatisticsRequest(organization=organization),
    )
    add(
        SERVICE + "DeviceService/UpdateDevice",
        devices_pb2.UpdateDeviceRequest(
            device=devices_pb2.Device(name="devices/b-sensor", tags=["checked"]),
            update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
        ),
    )
    add(SERVICE + "DeviceService/GetTwin", devices_pb2.GetTwinRequest(device="devices/b-sensor"))
    add(
        SERVICE + "DeviceService/UpdateDesiredState",
        devices_pb2.UpdateDesiredStateRequest(device="devices/b-sensor", patch=patch),
    )
    add(
        SERVICE + "CommandService/SendCommand",
        devices_pb2.SendCommandRequest(
            device="devices/b-sensor", command="reboot", ttl=duration_pb2.Duration(seconds=600)
        ),
    )
    add(SERVICE + "CommandService/GetCommand", devices_pb2.GetCommandRequest(name=command.name))
    add(SERVICE + "CommandService/ListCommands", devices_pb2.ListCommandsRequest(parent="devices/b-sensor"))
    add(
        SERVICE + "DeviceService/IssueDeviceToken",
        devices_pb2.IssueDeviceTokenRequest(device="devices/b-sensor"),
    )
    add(
        SERVICE + "DeviceService/SignDeviceCertificate",
        devices_pb2.SignDeviceCertificateRequest(device="devices/b-sensor", csr_pem=_csr("b-sensor")),
    )
    add(
        SERVICE + "DeviceService/RevokeDeviceCredentials",
        devices_pb2.RevokeDeviceCredentialsRequest(device="devices/b-sensor"),
    )
    add(
        SERVICE + "DeviceService/CreateDevice",
        devices_pb2.CreateDeviceRequest(device=_device(organization), device_id="b-sensor-2"),
    )
    add(
        SERVICE + "DeviceService/BatchCreateDevices",
        devices_pb2.BatchCreateDevicesRequest(
            requests=[devices_pb2.CreateDeviceRequest(device=_device(organization), device_id="b-sensor-3")]
        ),
    )
    add(
        SERVICE + "JobService/CreateFirmwareImage",
        devices_pb2.CreateFirmwareImageRequest(parent="deviceModels/tenancy-sensor", firmware_image=firmware),
    )
    add(SERVICE + "JobService/CreateJob", devices_pb2.CreateJobRequest(job=job, job_id="b-job-2"))
    add(SERVICE + "JobService/GetJob", devices_pb2.GetJobRequest(name="jobs/b-job"))
    add(SERVICE + "JobService/CancelJob", devices_pb2.CancelJobRequest(name="jobs/b-job"))
    add(SERVICE + "TelemetryService/SubscribeTelemetry", devices_pb2.SubscribeTelemetryRequest(follow=False))
    add("/cityos.common.v1.EventService/StreamEvents", events_pb2.StreamEventsRequest(follow=False))
    add(
        SERVICE + "DeviceService/DecommissionDevice",
        devices_pb2.DecommissionDeviceRequest(name="devices/b-sensor"),
    )
    case.listings = {
        SERVICE + "DeviceService/ListDevices",
        SERVICE + "DeviceService/GetFleetStatistics",
        SERVICE + "TelemetryService/SubscribeTelemetry",
        "/cityos.common.v1.EventService/StreamEvents",
    }
    return case


EXAMPLES = TenancyExamples(seed=seed, exempt=EXEMPT)
