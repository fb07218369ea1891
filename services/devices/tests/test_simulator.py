"""The device simulator provisions its fleet once, keeps it reporting, and answers commands."""

from __future__ import annotations

import dataclasses

from google.protobuf import duration_pb2, struct_pb2

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_devices.simulator import Simulator, environment_sensors


async def test_the_simulator_provisions_reports_and_answers_commands(fleet, tmp_path):
    admin = fleet.token("sim", "city-office", "city-admin")
    behaviour = environment_sensors(count=5)
    simulator = Simulator(fleet.channel, admin, [behaviour], state_dir=tmp_path / "sim", speedup=600)
    # 300 s interval / 600 = every 0.5 s: a few uplinks per device in 2 s.
    await simulator.run(duration_s=2.0)
    assert simulator.readings_sent >= 10
    listed = await fleet.registry.ListDevices(
        devices_pb2.ListDevicesRequest(type="environment.sensor"), metadata=admin
    )
    assert [d.name for d in listed.devices] == [f"devices/env-{n:04d}" for n in range(5)]
    assert all(d.status == devices_pb2.DEVICE_STATUS_ACTIVE for d in listed.devices)
    assert all(d.ownership.owner_organization == "ecology-bureau" for d in listed.devices)

    await devices_pb2_grpc.CommandServiceStub(fleet.channel).SendCommand(
        devices_pb2.SendCommandRequest(
            device="devices/env-0000", command="reboot", ttl=duration_pb2.Duration(seconds=600)
        ),
        metadata=admin,
    )
    # A second run finds the same fleet (no duplicates, same tokens) and answers the queued command.
    again = Simulator(fleet.channel, admin, [behaviour], state_dir=tmp_path / "sim", speedup=600)
    await again.run(duration_s=2.0)
    assert again.commands_answered == 1
    assert again.readings_sent >= 10  # its readings are new ones, not replays of the first run's
    listed = await fleet.registry.ListDevices(devices_pb2.ListDevicesRequest(), metadata=admin)
    assert len(listed.devices) == 5


async def test_a_behaviour_carries_out_commands_and_desired_state_and_may_stay_silent(fleet, tmp_path):
    """A lamp-like behaviour: `on_command` decides each answer, `on_desired` applies the twin, and a
    sample of None sends nothing (a device without power)."""
    admin = fleet.token("sim", "city-office", "city-admin")
    applied: dict[str, object] = {}
    silent = {"env-0001"}

    def on_command(state, command, parameters):  # type: ignore[no-untyped-def]
        level = parameters.get("level", "")
        return (level.isdigit(), f"level {level}" if level.isdigit() else "bad level")

    def on_desired(state, desired):  # type: ignore[no-untyped-def]
        applied[state.device_id] = desired.get("level")

    def sample(state, rng):  # type: ignore[no-untyped-def]
        return None if state.device_id in silent else {"temperature_c": 20.0}

    model = devices_pb2.DeviceModel()
    model.CopyFrom(environment_sensors().model)
    model.supported_commands.append("set_level")
    behaviour = dataclasses.replace(
        environment_sensors(count=2),
        model=model,
        psm_periodic_update_s=0,
        sample=sample,
        on_command=on_command,
        on_desired=on_desired,
    )
    first = Simulator(fleet.channel, admin, [behaviour], state_dir=tmp_path / "sim", speedup=600)
    await first.run(duration_s=1.0)  # provisions; env-0001 never reports
    sent_by_silent = await fleet.registry.GetDevice(
        devices_pb2.GetDeviceRequest(name="devices/env-0001"), metadata=admin
    )
    assert not sent_by_silent.HasField("last_seen_time")

    commands = devices_pb2_grpc.CommandServiceStub(fleet.channel)
    good = await commands.SendCommand(
        devices_pb2.SendCommandRequest(
            device="devices/env-0000",
            command="set_level",
            parameters={"level": "40"},
            ttl=duration_pb2.Duration(seconds=600),
        ),
        metadata=admin,
    )
    bad = await commands.SendCommand(
        devices_pb2.SendCommandRequest(
            device="devices/env-0000",
            command="set_level",
            parameters={"level": "loud"},
            ttl=duration_pb2.Duration(seconds=600),
        ),
        metadata=admin,
    )
    await fleet.registry.UpdateDesiredState(
        devices_pb2.UpdateDesiredStateRequest(
            device="devices/env-0000",
            patch=struct_pb2.Struct(fields={"level": struct_pb2.Value(number_value=70)}),
        ),
        metadata=admin,
    )
    second = Simulator(fleet.channel, admin, [behaviour], state_dir=tmp_path / "sim", speedup=600)
    await second.run(duration_s=1.5)
    assert applied == {"env-0000": 70}
    answered = {}
    for name in (good.name, bad.name):
        command = await commands.GetCommand(devices_pb2.GetCommandRequest(name=name), metadata=admin)
        answered[name] = (command.status, command.result)
    assert answered == {
        good.name: (devices_pb2.COMMAND_STATUS_ACKED, "level 40"),
        bad.name: (devices_pb2.COMMAND_STATUS_FAILED, "bad level"),
    }
