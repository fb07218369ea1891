"""The device twin: desired state (set by operators and services, delivered with the next uplink) and
reported state (the latest value of each metric), each versioned."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2

from cityos.devices.v1 import devices_pb2
from cityos_devices import domain
from cityos_devices.models import DeviceRow
from cityos_platform.db import Tx
from cityos_platform.errors import Aborted, InvalidArgument

MAX_KEYS = 64
MAX_JSON_BYTES = 16 * 1024


def to_proto(row: DeviceRow) -> devices_pb2.Twin:
    reported = struct_pb2.Struct()
    reported.update({metric: entry["value"] for metric, entry in row.reported.items()})
    desired = struct_pb2.Struct()
    desired.update(row.desired or {})
    twin = devices_pb2.Twin(
        device=f"devices/{row.device_id}",
        desired=desired,
        desired_version=row.desired_version,
        reported=reported,
        reported_version=row.reported_version,
        delivered_desired_version=row.delivered_desired_version,
    )
    if row.desired_time is not None:
        twin.desired_time.FromDatetime(row.desired_time)
    return twin


def apply_patch(tx: Tx, row: DeviceRow, patch: struct_pb2.Struct, expected_version: int) -> devices_pb2.Twin:
    if expected_version and expected_version != row.desired_version:
        raise Aborted(
            "the desired state changed since it was read; read the twin again and reapply the change",
            reason="TWIN_VERSION_MISMATCH",
            metadata={"desired_version": str(row.desired_version)},
        )
    changes: dict[str, Any] = json_format.MessageToDict(patch)
    if not changes:
        raise InvalidArgument.field("patch", "set or remove at least one key")
    desired = dict(row.desired or {})
    for key, value in changes.items():
        if value is None:
            desired.pop(key, None)
        else:
            desired[key] = value
    if len(desired) > MAX_KEYS:
        raise InvalidArgument.field("patch", f"the desired state holds at most {MAX_KEYS} keys")
    if len(json.dumps(desired)) > MAX_JSON_BYTES:
        raise InvalidArgument.field("patch", "the desired state is at most 16 KiB as JSON")
    bad = [key for key in changes if not domain.METRIC_NAME.match(key)]
    if bad:
        raise InvalidArgument.many([(f"patch.{key}", "keys are [a-z][a-z0-9_]{0,62}") for key in bad])
    row.desired = desired
    row.desired_version += 1
    row.desired_time = tx.now
    return to_proto(row)


def merge_reported(
    reported: dict[str, Any], latest: dict[str, tuple[datetime, float]]
) -> tuple[dict[str, Any], bool]:
    """The reported state with each metric's latest reading applied, unless a newer one is there
    already (a late, out-of-order reading never overwrites a newer value); and whether it changed."""
    merged = dict(reported)
    changed = False
    for metric, (when, value) in latest.items():
        stamp = when.isoformat()
        known = merged.get(metric)
        if known is None or known["time"] <= stamp:
            changed = changed or known is None or known["value"] != value
            merged[metric] = {"value": value, "time": stamp}
    return merged, changed


def pending_for_device(row: DeviceRow) -> devices_pb2.Twin | None:
    """The twin to hand to the device with this uplink, when its desired state is newer than what it got."""
    if row.desired_version <= row.delivered_desired_version:
        return None
    row.delivered_desired_version = row.desired_version
    return to_proto(row)
