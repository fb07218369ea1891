"""`cityos.devices.v1.CommandService` and command delivery.

A command is queued with a time to live. The telemetry path delivers a device's queued commands right
after its uplink commits (`deliver()`, called from the ingest transaction), so a sleeping NB-IoT device
gets them in the answer to its next report; a command whose time to live has passed is marked EXPIRED
instead, and is never delivered.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta

import grpc
from sqlalchemy import select

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices import domain
from cityos_devices.hub import ConnectionHub
from cityos_devices.models import CommandRow, DeviceModelRow, DeviceRow
from cityos_platform.db import Database, Tx
from cityos_platform.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.paging import PageTokens, page_size
from cityos_platform.tenancy import Access, can_reach, not_found

# LwM2M object 5 (Firmware Update), resource 5 "Update Result".
FIRMWARE_RESULTS = {
    1: "firmware updated successfully",
    2: "not enough flash memory",
    3: "out of RAM",
    4: "connection lost during download",
    5: "integrity check failure",
    6: "unsupported package type",
    7: "invalid URI",
    8: "firmware update failed",
    9: "unsupported protocol",
}
MIN_TTL = timedelta(seconds=1)
MAX_TTL = timedelta(days=7)
MAX_PARAMETERS = 32
PARAMETER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def command_to_proto(row: CommandRow) -> devices_pb2.Command:
    command = devices_pb2.Command(
        name=f"devices/{row.device_id}/commands/{row.command_id}",
        command=row.command,
        parameters=row.parameters,
        status=row.status,  # type: ignore[arg-type]
        create_time=domain.timestamp(row.create_time),
        expire_time=domain.timestamp(row.expire_time),
        result=row.result,
        requested_by=row.requested_by,
    )
    if row.send_time is not None:
        command.send_time.FromDatetime(row.send_time)
    if row.ack_time is not None:
        command.ack_time.FromDatetime(row.ack_time)
    return command


def _emit(tx: Tx, what: str, row: CommandRow, area_cell: str = "") -> None:
    command = command_to_proto(row)
    tx.emit(
        f"devices.command.{what}",
        command,
        subject=command.name,
        owner_organization=row.owner_organization,
        area_cell=area_cell,
    )


async def expire_due(tx: Tx, device_id: str | None = None) -> int:
    """Mark queued commands past their time to live EXPIRED (of one device, or all)."""
    statement = select(CommandRow).where(
        CommandRow.status == int(devices_pb2.COMMAND_STATUS_QUEUED), CommandRow.expire_time <= tx.now
    )
    if device_id is not None:
        statement = statement.where(CommandRow.device_id == device_id)
    rows = (await tx.session.scalars(statement.with_for_update())).all()
    for row in rows:
        row.status = int(devices_pb2.COMMAND_STATUS_EXPIRED)
        _emit(tx, "expired", row)
    return len(rows)


async def deliver(tx: Tx, device_id: str) -> list[devices_pb2.Command]:
    """In the uplink's transaction: expire what is too late, hand over the rest (now SENT)."""
    await expire_due(tx, device_id)
    rows = (
        await tx.session.scalars(
            select(CommandRow)
            .where(
                CommandRow.device_id == device_id, CommandRow.status == int(devices_pb2.COMMAND_STATUS_QUEUED)
            )
            .order_by(CommandRow.create_time, CommandRow.command_id)
            .with_for_update()
        )
    ).all()
    for row in rows:
        row.status = int(devices_pb2.COMMAND_STATUS_SENT)
        row.send_time = tx.now
        _emit(tx, "sent", row)
    return [command_to_proto(row) for row in rows]


def queue_command(
    tx: Tx,
    device: DeviceRow,
    command: str,
    parameters: dict[str, str],
    ttl: timedelta,
    requested_by: str,
    job_id: str | None = None,
) -> CommandRow:
    """Queue a (validated) command for a device in this transaction."""
    row = CommandRow(
        command_id=secrets.token_hex(8),
        device_id=device.device_id,
        command=command,
        parameters=parameters,
        status=int(devices_pb2.COMMAND_STATUS_QUEUED),
        owner_organization=device.owner_organization,
        requested_by=requested_by,
        create_time=tx.now,
        expire_time=tx.now + ttl,
        send_time=None,
        ack_time=None,
        result="",
        job_id=job_id,
    )
    tx.session.add(row)
    _emit(tx, "queued", row, device.area_cell)
    return row


def validate_command(
    command: str, parameters: dict[str, str], ttl: timedelta, prefix: str = ""
) -> domain.Violations:
    violations: domain.Violations = []
    if not MIN_TTL <= ttl <= MAX_TTL:
        violations.append((f"{prefix}ttl", "must be between 1 second and 7 days"))
    if not domain.METRIC_NAME.match(command):
        violations.append((f"{prefix}command", "must be [a-z][a-z0-9_]{0,62}"))
    if len(parameters) > MAX_PARAMETERS:
        violations.append((f"{prefix}parameters", f"at most {MAX_PARAMETERS} parameters"))
    for key, value in parameters.items():
        if not PARAMETER.match(key) or len(value) > 1024:
            violations.append(
                (
                    f"{prefix}parameters.{key}",
                    "names are [a-z][a-z0-9_]{0,62}, values at most 1,024 characters",
                )
            )
    return violations


async def ack_command(
    db: Database, caller_subject: str, request: devices_pb2.AckCommandRequest
) -> devices_pb2.Command:
    """A device's answer to one of its commands: SENT becomes ACKED or FAILED; a repeat changes nothing."""
    device_id, command_id = command_ids(request.name)
    if caller_subject != f"devices/{device_id}":
        raise PermissionDenied("a device answers only its own commands", reason="DEVICE_MISMATCH")
    if len(request.result) > 1024:
        raise InvalidArgument.field("result", "at most 1,024 characters")
    async with db.transaction() as tx:
        row = await tx.session.get(CommandRow, command_id, with_for_update=True)
        if row is None or row.device_id != device_id:
            raise not_found("command", request.name)
        if row.status in (int(devices_pb2.COMMAND_STATUS_ACKED), int(devices_pb2.COMMAND_STATUS_FAILED)):
            return command_to_proto(row)
        if row.status != int(devices_pb2.COMMAND_STATUS_SENT):
            raise FailedPrecondition(
                f"the command is {devices_pb2.CommandStatus.Name(row.status)}, not SENT",  # type: ignore[arg-type]
                reason="COMMAND_NOT_SENT",
            )
        succeeded = request.succeeded
        result = request.result
        if row.command == "update_firmware" and request.firmware_update_result:
            # LwM2M object 5: only "1" is a successful update, whatever the flag says.
            code = request.firmware_update_result
            succeeded = code == 1
            result = f"LwM2M update result {code}: {FIRMWARE_RESULTS.get(code, 'unknown')}" + (
                f"; {result}" if result else ""
            )
        if row.command == "update_firmware" and succeeded:
            device = await tx.session.get(DeviceRow, device_id, with_for_update=True)
            if device is not None:
                device.firmware_version = row.parameters.get("version", device.firmware_version)
                device.update_time = tx.now
        status = devices_pb2.COMMAND_STATUS_ACKED if succeeded else devices_pb2.COMMAND_STATUS_FAILED
        row.status = int(status)
        row.ack_time = tx.now
        row.result = result[:1024]
        _emit(tx, "acked" if request.succeeded else "failed", row)
        return command_to_proto(row)


def command_ids(name: str, field: str = "name") -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "devices" or parts[2] != "commands" or not parts[3]:
        raise InvalidArgument.field(field, "must look like devices/{device}/commands/{command}")
    domain.name_id(f"devices/{parts[1]}", "devices", field)
    return parts[1], parts[3]


class CommandServicer(devices_pb2_grpc.CommandServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens, hub: ConnectionHub) -> None:
        self.db = db
        self.page_tokens = page_tokens
        self.hub = hub

    async def SendCommand(
        self, request: devices_pb2.SendCommandRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Command:
        caller = current_call().principal
        device_id = domain.name_id(request.device, "devices", "device")
        ttl = timedelta(seconds=domain.seconds(request.ttl))
        violations = validate_command(request.command, dict(request.parameters), ttl)
        if violations:
            raise InvalidArgument.many(violations)

        async def send(tx: Tx) -> devices_pb2.Command:
            device = await tx.session.get(DeviceRow, device_id)
            if device is None or not can_reach(device, caller, Access.WRITE):
                raise not_found("device", request.device)
            if device.status == devices_pb2.DEVICE_STATUS_DECOMMISSIONED:
                raise FailedPrecondition("the device is decommissioned", reason="DEVICE_DECOMMISSIONED")
            model = await tx.session.get(DeviceModelRow, device.model_id)
            if model is None or request.command not in model.supported_commands:
                raise InvalidArgument.field(
                    "command",
                    f"the device's model supports: {', '.join(model.supported_commands if model else [])}",
                )
            row = queue_command(tx, device, request.command, dict(request.parameters), ttl, caller.subject)
            return command_to_proto(row)

        command = await idempotent(self.db, request, devices_pb2.Command, send)
        self.hub.wake(device_id)  # a connected device gets it now
        return command

    async def _visible(self, tx: Tx, device_id: str, name: str) -> DeviceRow:
        device = await tx.session.get(DeviceRow, device_id)
        caller = current_call().principal
        if device is None or not (can_reach(device, caller) or caller.subject == f"devices/{device_id}"):
            raise not_found("command", name)
        return device

    async def GetCommand(
        self, request: devices_pb2.GetCommandRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Command:
        device_id, command_id = command_ids(request.name)
        async with self.db.transaction() as tx:
            await self._visible(tx, device_id, request.name)
            await expire_due(tx, device_id)  # report EXPIRED as soon as it is due
            row = await tx.session.get(CommandRow, command_id)
            if row is None or row.device_id != device_id:
                raise not_found("command", request.name)
            return command_to_proto(row)

    async def ListCommands(
        self, request: devices_pb2.ListCommandsRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.ListCommandsResponse:
        caller = current_call().principal
        device_id = domain.name_id(request.parent, "devices", "parent")
        size = page_size(request.page_size)
        position = self.page_tokens.parse(
            request.page_token, subject=caller.subject, organization=caller.organization, request=request
        )
        async with self.db.transaction() as tx:
            await self._visible(tx, device_id, request.parent)
            await expire_due(tx, device_id)
            statement = select(CommandRow).where(CommandRow.device_id == device_id)
            if request.status:
                statement = statement.where(CommandRow.status == int(request.status))
            if position:
                before = datetime.fromisoformat(position["create_time"])
                statement = statement.where(
                    (CommandRow.create_time < before)
                    | ((CommandRow.create_time == before) & (CommandRow.command_id < position["command_id"]))
                )
            rows = list(
                (
                    await tx.session.scalars(
                        statement.order_by(CommandRow.create_time.desc(), CommandRow.command_id.desc()).limit(
                            size + 1
                        )
                    )
                ).all()
            )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = self.page_tokens.issue(
                subject=caller.subject,
                organization=caller.organization,
                request=request,
                position={"create_time": rows[-1].create_time.isoformat(), "command_id": rows[-1].command_id},
            )
        return devices_pb2.ListCommandsResponse(
            commands=[command_to_proto(r) for r in rows], next_page_token=token
        )

    async def AckCommand(
        self, request: devices_pb2.AckCommandRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Command:
        return await ack_command(self.db, current_call().principal.subject, request)
