"""Jobs: one command over many devices, staged.

A job fixes its targets when it starts (explicit devices, or the filter evaluated then), and each tick
of the runner starts at most `rollout_per_minute` devices per started minute by queuing their commands
(delivered like any command). Outcomes come from those commands: ACKED is a success, FAILED or EXPIRED
a failure. Once `abort_min_finished` have finished and failed/finished exceeds `abort_failure_ratio`,
the job is ABORTED and starts no further device; CancelJob does the same on request; a closed window
EXPIRES it. The runner is a loop in the service process calling `tick()`; every step is a transaction,
so a restarted process resumes where the last one stopped.
"""

from __future__ import annotations

import logging
import math
import re
from datetime import UTC, timedelta

import grpc
from google.protobuf import json_format, struct_pb2
from sqlalchemy import func, select

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices import domain, twin
from cityos_devices.commands import queue_command, validate_command
from cityos_devices.models import (
    CommandRow,
    DeviceModelRow,
    DeviceRow,
    FirmwareImageRow,
    JobRow,
    JobTargetRow,
)
from cityos_platform.areas import AreaRegistry
from cityos_platform.auth import Principal
from cityos_platform.db import Database, Tx
from cityos_platform.errors import AlreadyExists, InvalidArgument, PermissionDenied
from cityos_platform.idempotency import idempotent
from cityos_platform.interceptor import current_call
from cityos_platform.tasks import PeriodicTask
from cityos_platform.tenancy import Access, can_reach, is_city_wide, not_found

log = logging.getLogger(__name__)

MAX_EXPLICIT = 10_000
ACTIVE = (int(devices_pb2.JOB_STATE_SCHEDULED), int(devices_pb2.JOB_STATE_RUNNING))
FAILED = (int(devices_pb2.COMMAND_STATUS_FAILED), int(devices_pb2.COMMAND_STATUS_EXPIRED))


async def progress(tx: Tx, job: JobRow) -> devices_pb2.JobProgress:
    if job.desired_patch:
        delivered = (
            await tx.session.execute(
                select(JobTargetRow.desired_version, DeviceRow.delivered_desired_version)
                .join(DeviceRow, DeviceRow.device_id == JobTargetRow.device_id)
                .where(JobTargetRow.job_id == job.job_id, JobTargetRow.desired_version.is_not(None))
            )
        ).all()
        return devices_pb2.JobProgress(
            total=job.total,
            started=len(delivered),
            succeeded=sum(1 for wanted, got in delivered if wanted is not None and got >= wanted),
            failed=0,
        )
    counts = dict(
        (
            await tx.session.execute(
                select(CommandRow.status, func.count())
                .where(CommandRow.job_id == job.job_id)
                .group_by(CommandRow.status)
            )
        ).all()
    )
    return devices_pb2.JobProgress(
        total=job.total,
        started=sum(counts.values()),
        succeeded=counts.get(int(devices_pb2.COMMAND_STATUS_ACKED), 0),
        failed=sum(counts.get(status, 0) for status in FAILED),
    )


def job_to_proto(job: JobRow, done: devices_pb2.JobProgress) -> devices_pb2.Job:
    result = devices_pb2.Job(
        name=f"jobs/{job.job_id}",
        command=job.command,
        parameters=job.parameters,
        command_ttl=domain.duration(job.command_ttl_s),
        target=json_format.ParseDict(job.target, devices_pb2.JobTarget()),
        rollout_per_minute=job.rollout_per_minute,
        abort_failure_ratio=job.abort_failure_ratio,
        abort_min_finished=job.abort_min_finished,
        window_start=domain.timestamp(job.window_start),
        state=job.state,  # type: ignore[arg-type]
        progress=done,
        owner_organization=job.owner_organization,
        create_time=domain.timestamp(job.create_time),
        firmware_image=job.firmware_image,
    )
    if job.desired_patch:
        result.desired_patch.update(job.desired_patch)
    if job.window_end is not None:
        result.window_end.FromDatetime(job.window_end)
    return result


class JobRunner:
    def __init__(self, db: Database, areas: AreaRegistry, *, interval_s: float = 1.0) -> None:
        self.db = db
        self.areas = areas
        self._periodic = PeriodicTask("job runner", interval_s, self.tick)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def tick(self) -> None:
        """Advance every active job by one step."""
        async with self.db.read() as session:
            job_ids = list(
                (await session.scalars(select(JobRow.job_id).where(JobRow.state.in_(ACTIVE)))).all()
            )
        for job_id in job_ids:
            async with self.db.transaction() as tx:
                job = await tx.session.get(JobRow, job_id, with_for_update=True)
                if job is not None and job.state in ACTIVE:
                    await self._advance(tx, job)

    async def _advance(self, tx: Tx, job: JobRow) -> None:
        now = tx.now
        if job.state == devices_pb2.JOB_STATE_SCHEDULED:
            if now < job.window_start:
                return
            await self._fix_targets(tx, job)
        done = await progress(tx, job)
        finished = done.succeeded + done.failed
        minimum = max(1, job.abort_min_finished)
        if (
            job.abort_failure_ratio
            and finished >= minimum
            and done.failed / finished > job.abort_failure_ratio
        ):
            return self._finish(tx, job, devices_pb2.JOB_STATE_ABORTED, done)
        if done.started >= job.total:
            if finished >= job.total:
                self._finish(tx, job, devices_pb2.JOB_STATE_SUCCEEDED, done)
            return None
        if job.window_end is not None and now > job.window_end:
            return self._finish(tx, job, devices_pb2.JOB_STATE_EXPIRED, done)
        assert job.start_time is not None
        if job.rollout_per_minute:
            minutes = math.floor((now - job.start_time).total_seconds() / 60) + 1
            allowed = min(job.total, job.rollout_per_minute * minutes)
        else:
            allowed = job.total
        await self._start(tx, job, allowed - done.started)
        return None

    async def _fix_targets(self, tx: Tx, job: JobRow) -> None:
        statement = select(DeviceRow).where(DeviceRow.status != int(devices_pb2.DEVICE_STATUS_DECOMMISSIONED))
        target = json_format.ParseDict(job.target, devices_pb2.JobTarget())
        area = self.areas.resolve(target.area) if target.area else None
        if target.devices:
            statement = statement.where(
                DeviceRow.device_id.in_([n.removeprefix("devices/") for n in target.devices])
            )
        if target.type:
            statement = statement.where(DeviceRow.type == target.type)
        if job.firmware_image:  # only devices of the image's model
            statement = statement.where(DeviceRow.model_id == job.firmware_image.split("/")[1])
        if area is not None:
            statement = statement.where(DeviceRow.area_cell.in_(sorted(area.cells)))
        if not job.city_wide:
            statement = statement.where(
                (DeviceRow.owner_organization == job.owner_organization)
                | (DeviceRow.operator_organization == job.owner_organization)
            )
        rows = (await tx.session.scalars(statement.order_by(DeviceRow.device_id))).all()
        chosen = [
            row
            for row in rows
            if (not target.tag or target.tag in row.tags)
            and (area is None or area.contains(row.latitude, row.longitude))
        ]
        for row in chosen:
            tx.session.add(JobTargetRow(job_id=job.job_id, device_id=row.device_id, command_id=None))
        job.total = len(chosen)
        job.start_time = tx.now
        job.state = int(devices_pb2.JOB_STATE_RUNNING)
        self._emit(tx, "started", job, devices_pb2.JobProgress(total=job.total))

    async def _start(self, tx: Tx, job: JobRow, count: int) -> None:
        if count <= 0:
            return
        pending = (
            await tx.session.execute(
                select(JobTargetRow, DeviceRow)
                .join(DeviceRow, DeviceRow.device_id == JobTargetRow.device_id)
                .where(
                    JobTargetRow.job_id == job.job_id,
                    JobTargetRow.command_id.is_(None),
                    JobTargetRow.desired_version.is_(None),
                )
                .order_by(JobTargetRow.device_id)
                .limit(count)
                .with_for_update(of=DeviceRow)
            )
        ).all()
        if job.desired_patch:
            patch = json_format.ParseDict(job.desired_patch, struct_pb2.Struct())
            for target, device in pending:
                target.desired_version = twin.apply_patch(tx, device, patch, 0).desired_version
            return
        ttl = timedelta(seconds=job.command_ttl_s)
        for target, device in pending:
            command = queue_command(
                tx, device, job.command, dict(job.parameters), ttl, job.requested_by, job.job_id
            )
            target.command_id = command.command_id

    def _finish(self, tx: Tx, job: JobRow, state: int, done: devices_pb2.JobProgress) -> None:
        job.state = int(state)
        self._emit(tx, devices_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower(), job, done)  # type: ignore[arg-type]

    def _emit(self, tx: Tx, what: str, job: JobRow, done: devices_pb2.JobProgress) -> None:
        tx.emit(
            f"devices.job.{what}",
            job_to_proto(job, done),
            subject=f"jobs/{job.job_id}",
            owner_organization=job.owner_organization,
        )


VERSION = re.compile(r"^[0-9A-Za-z.+-]{1,64}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
FIRMWARE_COMMAND = "update_firmware"


def image_to_proto(row: FirmwareImageRow) -> devices_pb2.FirmwareImage:
    return devices_pb2.FirmwareImage(
        name=f"deviceModels/{row.model_id}/firmwareImages/{row.version}",
        version=row.version,
        package_uri=row.package_uri,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        create_time=domain.timestamp(row.create_time),
    )


def image_ids(name: str, field: str) -> tuple[str, str]:
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "deviceModels"
        or parts[2] != "firmwareImages"
        or not VERSION.match(parts[3])
    ):
        raise InvalidArgument.field(field, "must look like deviceModels/{model}/firmwareImages/{version}")
    return domain.name_id(f"deviceModels/{parts[1]}", "deviceModels", field), parts[3]


class JobServicer(devices_pb2_grpc.JobServiceServicer):
    def __init__(self, db: Database, areas: AreaRegistry, runner: JobRunner) -> None:
        self.db = db
        self.areas = areas
        self.runner = runner

    async def CreateFirmwareImage(
        self, request: devices_pb2.CreateFirmwareImageRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.FirmwareImage:
        caller = current_call().principal
        model_id = domain.name_id(request.parent, "deviceModels", "parent")
        image = request.firmware_image
        violations: domain.Violations = []
        if not VERSION.match(image.version):
            violations.append(("firmware_image.version", "must be 1 to 64 of [0-9A-Za-z.+-]"))
        if not image.package_uri.startswith(("https://", "coaps://")) or len(image.package_uri) > 2048:
            violations.append(("firmware_image.package_uri", "must be an https:// or coaps:// URI"))
        if not SHA256.match(image.sha256):
            violations.append(("firmware_image.sha256", "must be 64 lowercase hexadecimal digits"))
        if image.size_bytes == 0:
            violations.append(("firmware_image.size_bytes", "must be positive"))
        if violations:
            raise InvalidArgument.many(violations)

        async def create(tx: Tx) -> devices_pb2.FirmwareImage:
            model = await tx.session.get(DeviceModelRow, model_id)
            if model is None:
                raise not_found("device model", request.parent)
            if model.owner_organization != caller.organization and not is_city_wide(caller):
                # Models are a city-wide catalog, but only the model's owner publishes its firmware:
                # anyone else could offer the fleet a package of their choosing.
                raise PermissionDenied(
                    f"only {model.owner_organization} (the model's owner) registers its firmware",
                    reason="NOT_MODEL_OWNER",
                    metadata={"model_owner": model.owner_organization},
                )
            if await tx.session.get(FirmwareImageRow, (model_id, image.version)) is not None:
                raise AlreadyExists(
                    f"{request.parent} already has firmware {image.version}", reason="FIRMWARE_EXISTS"
                )
            row = FirmwareImageRow(
                model_id=model_id,
                version=image.version,
                package_uri=image.package_uri,
                sha256=image.sha256,
                size_bytes=image.size_bytes,
                owner_organization=caller.organization,
                create_time=tx.now,
            )
            tx.session.add(row)
            created = image_to_proto(row)
            tx.emit(
                "devices.firmware.created",
                created,
                subject=created.name,
                owner_organization=caller.organization,
            )
            return created

        return await idempotent(self.db, request, devices_pb2.FirmwareImage, create)

    async def ListFirmwareImages(
        self, request: devices_pb2.ListFirmwareImagesRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.ListFirmwareImagesResponse:
        model_id = domain.name_id(request.parent, "deviceModels", "parent")
        async with self.db.read() as session:
            rows = (
                await session.scalars(
                    select(FirmwareImageRow)
                    .where(FirmwareImageRow.model_id == model_id)
                    .order_by(FirmwareImageRow.create_time.desc(), FirmwareImageRow.version.desc())
                )
            ).all()
        return devices_pb2.ListFirmwareImagesResponse(firmware_images=[image_to_proto(r) for r in rows])

    async def _firmware_command(self, job: devices_pb2.Job) -> tuple[str, dict[str, str]]:
        """For a firmware job: the command and its parameters."""
        model_id, version = image_ids(job.firmware_image, "job.firmware_image")
        async with self.db.read() as session:
            image = await session.get(FirmwareImageRow, (model_id, version))
            model = await session.get(DeviceModelRow, model_id)
        if image is None or model is None:
            raise not_found("firmware image", job.firmware_image)
        if FIRMWARE_COMMAND not in model.supported_commands:
            raise InvalidArgument.field(
                "job.firmware_image", f"the model does not support {FIRMWARE_COMMAND}"
            )
        return FIRMWARE_COMMAND, {
            "version": image.version,
            "package_uri": image.package_uri,
            "sha256": image.sha256,
        }

    async def CreateJob(
        self, request: devices_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Job:
        caller = current_call().principal
        job = devices_pb2.Job()
        job.CopyFrom(request.job)
        operations = [bool(job.command), bool(job.firmware_image), job.HasField("desired_patch")]
        if sum(operations) != 1:
            raise InvalidArgument.field("job", "set exactly one of command, firmware_image and desired_patch")
        if job.HasField("desired_patch"):
            return await self._create(request, job, caller, [])
        if job.firmware_image:
            job.command, parameters = await self._firmware_command(job)
            job.parameters.update(parameters)
        ttl = timedelta(seconds=domain.seconds(job.command_ttl))
        violations = validate_command(job.command, dict(job.parameters), ttl, "job.")
        violations = [("job.command_ttl" if f == "job.ttl" else f, d) for f, d in violations]
        return await self._create(request, job, caller, violations)

    async def _create(
        self,
        request: devices_pb2.CreateJobRequest,
        job: devices_pb2.Job,
        caller: Principal,
        violations: domain.Violations,
    ) -> devices_pb2.Job:
        ttl = timedelta(seconds=domain.seconds(job.command_ttl))
        if job.HasField("desired_patch") and not json_format.MessageToDict(job.desired_patch):
            violations.append(("job.desired_patch", "set or remove at least one key"))
        domain.check_id(request.job_id, "job_id", violations)
        target = job.target
        if not (target.devices or target.type or target.tag or target.area):
            violations.append(("job.target", "name devices, or a type, tag or area to select them"))
        if len(target.devices) > MAX_EXPLICIT:
            violations.append(("job.target.devices", f"at most {MAX_EXPLICIT} devices"))
        for index, name in enumerate(target.devices):
            prefix, _, device_id = name.partition("/")
            if prefix != "devices" or not domain.RESOURCE_ID.match(device_id):
                violations.append((f"job.target.devices[{index}]", "must look like devices/{id}"))
        if target.tag and not domain.TAG.match(target.tag):
            violations.append(("job.target.tag", "must be 1 to 63 of [a-z0-9:_-]"))
        if not 0 <= job.abort_failure_ratio <= 1:
            violations.append(("job.abort_failure_ratio", "must be between 0 and 1"))
        window = job.HasField("window_end") and job.HasField("window_start")
        if window and job.window_end.ToDatetime() <= job.window_start.ToDatetime():
            violations.append(("job.window_end", "must be after window_start"))
        if violations:
            raise InvalidArgument.many(violations)
        if target.area:
            self.areas.resolve(target.area, field="job.target.area")

        async def create(tx: Tx) -> devices_pb2.Job:
            if await tx.session.get(JobRow, request.job_id) is not None:
                raise AlreadyExists(f"job 'jobs/{request.job_id}' already exists", reason="JOB_EXISTS")
            row = JobRow(
                job_id=request.job_id,
                command=job.command,
                parameters=dict(job.parameters),
                command_ttl_s=ttl.total_seconds(),
                target=json_format.MessageToDict(target, preserving_proto_field_name=True),
                rollout_per_minute=job.rollout_per_minute,
                abort_failure_ratio=job.abort_failure_ratio,
                abort_min_finished=job.abort_min_finished,
                window_start=job.window_start.ToDatetime(tzinfo=UTC)
                if job.HasField("window_start")
                else tx.now,
                window_end=job.window_end.ToDatetime(tzinfo=UTC) if job.HasField("window_end") else None,
                state=int(devices_pb2.JOB_STATE_SCHEDULED),
                owner_organization=caller.organization,
                city_wide=is_city_wide(caller),
                requested_by=caller.subject,
                create_time=tx.now,
                start_time=None,
                total=0,
                firmware_image=job.firmware_image,
                desired_patch=json_format.MessageToDict(job.desired_patch)
                if job.HasField("desired_patch")
                else {},
            )
            await self._check_command_supported(tx, job.command, target)
            # Devices named explicitly must be ones the caller may change: another organization's
            # device is as unknown here as anywhere else.
            for name in target.devices:
                device = await tx.session.get(DeviceRow, name.partition("/")[2])
                if device is None or not can_reach(device, caller, Access.WRITE):
                    raise not_found("device", name)
            tx.session.add(row)
            await self.runner._advance(tx, row)  # start at once when the window is open
            return job_to_proto(row, await progress(tx, row))

        return await idempotent(self.db, request, devices_pb2.Job, create)

    async def _check_command_supported(self, tx: Tx, command: str, target: devices_pb2.JobTarget) -> None:
        if not command or not target.type:
            return
        models = (
            await tx.session.scalars(select(DeviceModelRow).where(DeviceModelRow.type == target.type))
        ).all()
        if models and not any(command in model.supported_commands for model in models):
            raise InvalidArgument.field("job.command", f"no {target.type} model supports {command!r}")

    async def _job(self, tx: Tx, name: str) -> JobRow:
        job_id = domain.name_id(name, "jobs", "name")
        job = await tx.session.get(JobRow, job_id, with_for_update=True)
        caller = current_call().principal
        if job is None or not (is_city_wide(caller) or caller.organization == job.owner_organization):
            raise not_found("job", name)
        return job

    async def GetJob(
        self, request: devices_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Job:
        async with self.db.transaction() as tx:
            job = await self._job(tx, request.name)
            return job_to_proto(job, await progress(tx, job))

    async def CancelJob(
        self, request: devices_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> devices_pb2.Job:
        async with self.db.transaction() as tx:
            job = await self._job(tx, request.name)
            done = await progress(tx, job)
            if job.state in ACTIVE:
                self.runner._finish(tx, job, devices_pb2.JOB_STATE_CANCELLED, done)
            return job_to_proto(job, done)
