"""Jobs (DEV-4): a job over a filter is rolled out at its rate, stops at its abort threshold, and stops
when cancelled."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc


@pytest.fixture
async def lamps(fleet):
    """Ten streetlight controllers tagged `main-st`, two others elsewhere; each with its token."""
    await fleet.model()
    tokens = {}
    for n in range(12):
        device_id = f"lamp-{n:02d}"
        await fleet.device(device_id, tags=["main-st"] if n < 10 else ["side-st"])
        tokens[device_id] = await fleet.device_token(device_id)
    return tokens


def jobs(fleet):
    return devices_pb2_grpc.JobServiceStub(fleet.channel)


async def create(fleet, job_id="dim-main", **fields):
    job = devices_pb2.Job(
        command="recalibrate",
        command_ttl=duration_pb2.Duration(seconds=3600),
        target=devices_pb2.JobTarget(tag="main-st"),
        **fields,
    )
    return await jobs(fleet).CreateJob(
        devices_pb2.CreateJobRequest(job=job, job_id=job_id), metadata=fleet.operator
    )


async def get(fleet, name="jobs/dim-main"):
    return await jobs(fleet).GetJob(devices_pb2.GetJobRequest(name=name), metadata=fleet.operator)


async def uplink_and_answer(fleet, clock, tokens, device_id, sequence, succeeded=True) -> int:
    """The device wakes, reports, and answers every command it received; how many it got."""
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(clock.now())
    reply = await fleet.telemetry.Report(
        devices_pb2.ReportRequest(
            device=f"devices/{device_id}",
            readings=[devices_pb2.Reading(sequence=sequence, time=when, values={"occupied": 0.0})],
        ),
        metadata=tokens[device_id],
    )
    stub = devices_pb2_grpc.CommandServiceStub(fleet.channel)
    for command in reply.commands:
        await stub.AckCommand(
            devices_pb2.AckCommandRequest(name=command.name, succeeded=succeeded), metadata=tokens[device_id]
        )
    return len(reply.commands)


@pytest.mark.req("DEV-4")
async def test_a_rollout_rate_is_respected(fleet, lamps, clock):
    created = await create(fleet, rollout_per_minute=3)
    assert created.state == devices_pb2.JOB_STATE_RUNNING
    assert (created.progress.total, created.progress.started) == (10, 3)  # the filter chose the 10 on main-st
    runner = fleet.app.jobs
    clock.advance(seconds=59)
    await runner.tick()
    assert (await get(fleet)).progress.started == 3  # still the first minute
    clock.advance(seconds=1)
    await runner.tick()
    assert (await get(fleet)).progress.started == 6
    clock.advance(minutes=2)
    await runner.tick()
    job = await get(fleet)
    assert job.progress.started == 10  # capped at the targets
    for n in range(10):
        assert await uplink_and_answer(fleet, clock, lamps, f"lamp-{n:02d}", 1) == 1
    assert await uplink_and_answer(fleet, clock, lamps, "lamp-10", 1) == 0  # not a target
    await runner.tick()
    done = await get(fleet)
    assert done.state == devices_pb2.JOB_STATE_SUCCEEDED
    assert (done.progress.succeeded, done.progress.failed) == (10, 0)


@pytest.mark.req("DEV-4")
async def test_a_job_stops_at_its_abort_threshold(fleet, lamps, clock):
    await create(fleet, rollout_per_minute=4, abort_failure_ratio=0.5, abort_min_finished=3)
    runner = fleet.app.jobs
    # The first four devices get the command; three of them fail it.
    for n, ok in zip(range(4), (False, False, True, False), strict=True):
        await uplink_and_answer(fleet, clock, lamps, f"lamp-{n:02d}", 1, succeeded=ok)
    await runner.tick()
    job = await get(fleet)
    assert job.state == devices_pb2.JOB_STATE_ABORTED
    assert (job.progress.failed, job.progress.succeeded) == (3, 1)
    clock.advance(minutes=10)
    await runner.tick()
    assert (await get(fleet)).progress.started == 4  # nothing more was started


@pytest.mark.req("DEV-4")
async def test_cancel_stops_a_job(fleet, lamps, clock):
    await create(fleet, rollout_per_minute=2)
    cancelled = await jobs(fleet).CancelJob(
        devices_pb2.CancelJobRequest(name="jobs/dim-main"), metadata=fleet.operator
    )
    assert cancelled.state == devices_pb2.JOB_STATE_CANCELLED
    clock.advance(minutes=10)
    await fleet.app.jobs.tick()
    job = await get(fleet)
    assert (job.state, job.progress.started) == (devices_pb2.JOB_STATE_CANCELLED, 2)
    # Cancelling again is harmless; another organization cannot see it.
    again = await jobs(fleet).CancelJob(
        devices_pb2.CancelJobRequest(name="jobs/dim-main"), metadata=fleet.operator
    )
    assert again.state == devices_pb2.JOB_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await jobs(fleet).GetJob(devices_pb2.GetJobRequest(name="jobs/dim-main"), metadata=fleet.other_org)
    assert foreign.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("DEV-1")
async def test_bad_jobs_name_each_bad_field(fleet, lamps):
    from services.devices.tests.test_registry import violations

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs(fleet).CreateJob(
            devices_pb2.CreateJobRequest(
                job=devices_pb2.Job(
                    command="Bad!",
                    target=devices_pb2.JobTarget(devices=["lamp-1"], tag="Not A Tag"),
                    abort_failure_ratio=1.5,
                ),
                job_id="x_y",
            ),
            metadata=fleet.operator,
        )
    assert set(violations(caught.value)) == {
        "job.command",
        "job.command_ttl",
        "job.target.devices[0]",
        "job.target.tag",
        "job.abort_failure_ratio",
        "job_id",
    }


@pytest.mark.req("DEV-4")
async def test_a_firmware_job_updates_the_devices_that_report_success(fleet, lamps, clock):
    from cityos_devices.jobs import FIRMWARE_COMMAND

    await fleet.model(
        "lamp-fw", type="streetlights.controller", supported_commands=["reboot", FIRMWARE_COMMAND]
    )
    for n in range(3):
        await fleet.device(f"ctl-{n}", model="deviceModels/lamp-fw", tags=["main-st"])
        lamps[f"ctl-{n}"] = await fleet.device_token(f"ctl-{n}")
    image = await jobs(fleet).CreateFirmwareImage(
        devices_pb2.CreateFirmwareImageRequest(
            parent="deviceModels/lamp-fw",
            firmware_image=devices_pb2.FirmwareImage(
                version="2.1.0",
                package_uri="https://fw.cityos.example/lamp-fw-2.1.0.bin",
                sha256="a" * 64,
                size_bytes=512_000,
            ),
        ),
        metadata=fleet.operator,
    )
    listed = await jobs(fleet).ListFirmwareImages(
        devices_pb2.ListFirmwareImagesRequest(parent="deviceModels/lamp-fw"), metadata=fleet.operator
    )
    assert [i.name for i in listed.firmware_images] == [image.name]
    job = await jobs(fleet).CreateJob(
        devices_pb2.CreateJobRequest(
            job=devices_pb2.Job(
                firmware_image=image.name,
                command_ttl=duration_pb2.Duration(seconds=3600),
                target=devices_pb2.JobTarget(
                    tag="main-st"
                ),  # the geomag sensors on main-st are not of this model
            ),
            job_id="fw-2-1-0",
        ),
        metadata=fleet.operator,
    )
    assert (job.progress.total, job.command) == (3, FIRMWARE_COMMAND)
    stub = devices_pb2_grpc.CommandServiceStub(fleet.channel)
    for n, code in enumerate((1, 1, 5)):  # the third fails its integrity check
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(clock.now())
        reply = await fleet.telemetry.Report(
            devices_pb2.ReportRequest(
                device=f"devices/ctl-{n}",
                readings=[devices_pb2.Reading(sequence=1, time=when, values={"occupied": 0.0})],
            ),
            metadata=lamps[f"ctl-{n}"],
        )
        (command,) = reply.commands
        assert dict(command.parameters)["sha256"] == "a" * 64
        await stub.AckCommand(
            devices_pb2.AckCommandRequest(name=command.name, succeeded=True, firmware_update_result=code),
            metadata=lamps[f"ctl-{n}"],
        )
    await fleet.app.jobs.tick()
    done = await get(fleet, "jobs/fw-2-1-0")
    assert (done.state, done.progress.succeeded, done.progress.failed) == (
        devices_pb2.JOB_STATE_SUCCEEDED,
        2,
        1,
    )
    versions = {}
    for n in range(3):
        device = await fleet.registry.GetDevice(
            devices_pb2.GetDeviceRequest(name=f"devices/ctl-{n}"), metadata=fleet.operator
        )
        versions[n] = device.firmware_version
    assert versions == {0: "2.1.0", 1: "2.1.0", 2: "1.4.2"}


@pytest.mark.req("DEV-4")
async def test_a_desired_state_job_is_rolled_out_and_succeeds_as_devices_receive_it(fleet, lamps, clock):
    from google.protobuf import struct_pb2

    patch = struct_pb2.Struct()
    patch.update({"dim_level": 40})
    job = await jobs(fleet).CreateJob(
        devices_pb2.CreateJobRequest(
            job=devices_pb2.Job(
                desired_patch=patch, target=devices_pb2.JobTarget(tag="main-st"), rollout_per_minute=5
            ),
            job_id="dim-40",
        ),
        metadata=fleet.operator,
    )
    assert (job.state, job.progress.total, job.progress.started) == (devices_pb2.JOB_STATE_RUNNING, 10, 5)
    received = {}
    for n in range(5):  # the five started devices wake and get the new desired state
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(clock.now())
        reply = await fleet.telemetry.Report(
            devices_pb2.ReportRequest(
                device=f"devices/lamp-{n:02d}",
                readings=[devices_pb2.Reading(sequence=1, time=when, values={"occupied": 0.0})],
            ),
            metadata=lamps[f"lamp-{n:02d}"],
        )
        received[n] = dict(reply.twin.desired)
    assert received == {n: {"dim_level": 40.0} for n in range(5)}
    progress = (await get(fleet, "jobs/dim-40")).progress
    assert (progress.started, progress.succeeded) == (5, 5)
    clock.advance(minutes=1)
    await fleet.app.jobs.tick()
    assert (await get(fleet, "jobs/dim-40")).progress.started == 10
    with pytest.raises(grpc.aio.AioRpcError) as both:
        await jobs(fleet).CreateJob(
            devices_pb2.CreateJobRequest(
                job=devices_pb2.Job(
                    command="reboot", desired_patch=patch, target=devices_pb2.JobTarget(tag="x")
                ),
                job_id="both",
            ),
            metadata=fleet.operator,
        )
    assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT
