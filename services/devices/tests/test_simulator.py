"""The device simulator provisions its fleet once, keeps it reporting, and answers commands."""

from __future__ import annotations

from google.protobuf import duration_pb2

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
