"""Devices domain: validation of what callers send, conversion between rows and the API, connectivity.

Knows nothing about gRPC; raises `cityos_platform.errors` with field violations.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet  # type: ignore[import-not-found]

from cityos.common.v1 import resources_pb2
from cityos.devices.v1 import devices_pb2
from cityos_devices.models import DeviceModelRow, DeviceRow
from cityos_platform.errors import InvalidArgument

RESOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEVICE_TYPE = re.compile(r"^[a-z][a-z0-9.-]{0,62}$")
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
TAG = re.compile(r"^[a-z0-9:_-]{1,63}$")
DIGITS = re.compile(r"^[0-9]+$")
SD = re.compile(r"^[0-9A-Fa-f]{6}$")
MAX_TAGS = 32
MAX_METRICS = 128
OFFLINE_AFTER_INTERVALS = 2.5

Violations = list[tuple[str, str]]


def name_id(name: str, collection: str, field: str) -> str:
    prefix, _, resource_id = name.partition("/")
    if prefix != collection or not RESOURCE_ID.match(resource_id):
        raise InvalidArgument.field(
            field, f"must look like {collection}/{{id}}, the id being [a-z0-9-]{{1,63}}"
        )
    return resource_id


def check_id(value: str, field: str, violations: Violations) -> None:
    if not RESOURCE_ID.match(value):
        violations.append((field, "must be 1 to 63 of [a-z0-9-], starting with a letter or digit"))


def seconds(duration: duration_pb2.Duration) -> float:
    return float(duration.seconds) + duration.nanos / 1e9


def duration(value: float) -> duration_pb2.Duration:
    result = duration_pb2.Duration()
    result.FromNanoseconds(int(value * 1e9))
    return result


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result


# -- device models ---------------------------------------------------------------------------------


def validate_model(model: devices_pb2.DeviceModel, prefix: str = "device_model") -> Violations:
    violations: Violations = []
    if not DEVICE_TYPE.match(model.type):
        violations.append((f"{prefix}.type", "must be [a-z][a-z0-9.-]{0,62}, e.g. parking.sensor"))
    if not 1 <= len(model.vendor) <= 200:
        violations.append((f"{prefix}.vendor", "must be 1 to 200 characters"))
    if len(model.display_name) > 200:
        violations.append((f"{prefix}.display_name", "must be at most 200 characters"))
    if not model.metrics:
        violations.append((f"{prefix}.metrics", "declare at least one metric"))
    if len(model.metrics) > MAX_METRICS:
        violations.append((f"{prefix}.metrics", f"at most {MAX_METRICS} metrics"))
    seen: set[str] = set()
    for index, metric in enumerate(model.metrics):
        field = f"{prefix}.metrics[{index}]"
        if not METRIC_NAME.match(metric.name):
            violations.append((f"{field}.name", "must be [a-z][a-z0-9_]{0,62}"))
        elif metric.name in seen:
            violations.append((f"{field}.name", f"{metric.name!r} is declared twice"))
        seen.add(metric.name)
        if not metric.unit or len(metric.unit) > 32:
            violations.append((f"{field}.unit", "must be 1 to 32 characters (use '1' for counts and flags)"))
        for bound in ("min", "max"):
            if metric.HasField(bound) and not math.isfinite(getattr(metric, bound)):
                violations.append((f"{field}.{bound}", "must be a finite number"))
        if metric.HasField("min") and metric.HasField("max") and metric.min > metric.max:
            violations.append((f"{field}.min", "must not exceed max"))
    for index, command in enumerate(model.supported_commands):
        if not METRIC_NAME.match(command):
            violations.append((f"{prefix}.supported_commands[{index}]", "must be [a-z][a-z0-9_]{0,62}"))
    interval = seconds(model.reporting_interval)
    if not 1 <= interval <= 31 * 24 * 3600:
        violations.append((f"{prefix}.reporting_interval", "must be between 1 second and 31 days"))
    return violations


def model_to_proto(row: DeviceModelRow) -> devices_pb2.DeviceModel:
    metrics = []
    for spec in row.metrics:
        metric = devices_pb2.MetricSpec(name=spec["name"], unit=spec["unit"])
        if spec.get("min") is not None:
            metric.min = spec["min"]
        if spec.get("max") is not None:
            metric.max = spec["max"]
        metrics.append(metric)
    return devices_pb2.DeviceModel(
        name=f"deviceModels/{row.model_id}",
        type=row.type,
        vendor=row.vendor,
        display_name=row.display_name,
        supported_commands=row.supported_commands,
        metrics=metrics,
        reporting_interval=duration(row.reporting_interval_s),
        owner_organization=row.owner_organization,
        create_time=timestamp(row.create_time),
    )


def metric_specs(model: devices_pb2.DeviceModel) -> list[dict[str, Any]]:
    return [
        {
            "name": m.name,
            "unit": m.unit,
            "min": m.min if m.HasField("min") else None,
            "max": m.max if m.HasField("max") else None,
        }
        for m in model.metrics
    ]


# -- devices ---------------------------------------------------------------------------------------


def refuse_sim_secrets(message: Message, field: str) -> Violations:
    """SIM secret keys never enter the platform: the API has no field for them, and a request carrying
    fields the API does not know (where a foreign schema would put K or OPc) is refused outright."""
    violations: Violations = []
    if len(UnknownFieldSet(message)):
        violations.append(
            (field, "carries fields this API does not have; SIM secrets (K, OPc) are never accepted")
        )
    return violations


def validate_subscription(subscription: devices_pb2.Subscription, prefix: str) -> Violations:
    violations = refuse_sim_secrets(subscription, prefix)
    checks = (
        ("iccid", subscription.iccid, 18, 22),
        ("eid", subscription.eid, 32, 32),
        ("imei", subscription.imei, 15, 15),
        ("plmn", subscription.plmn, 5, 6),
    )
    for name, value, low, high in checks:
        if value and not (DIGITS.match(value) and low <= len(value) <= high):
            size = f"{low}" if low == high else f"{low} to {high}"
            violations.append((f"{prefix}.{name}", f"must be {size} digits"))
    supi = subscription.supi.removeprefix("imsi-")
    if subscription.supi and not (DIGITS.match(supi) and 6 <= len(supi) <= 15):
        violations.append(
            (f"{prefix}.supi", "must be an IMSI of 6 to 15 digits (optionally as imsi-<digits>)")
        )
    if subscription.HasField("slice"):
        if subscription.slice.sst > 255:
            violations.append((f"{prefix}.slice.sst", "must be 0 to 255"))
        if subscription.slice.sd and not SD.match(subscription.slice.sd):
            violations.append((f"{prefix}.slice.sd", "must be 6 hexadecimal digits"))
    if len(subscription.dnn) > 100:
        violations.append((f"{prefix}.dnn", "must be at most 100 characters"))
    timers = {
        "psm_periodic_update": subscription.psm_periodic_update,
        "psm_active_time": subscription.psm_active_time,
        "edrx_cycle": subscription.edrx_cycle,
    }
    for name, timer in timers.items():
        if seconds(timer) < 0:
            violations.append((f"{prefix}.{name}", "must not be negative"))
    return violations


def validate_tags(tags: Iterable[str], prefix: str) -> Violations:
    tags = list(tags)
    violations = [
        (f"{prefix}[{i}]", "must be 1 to 63 of [a-z0-9:_-]") for i, t in enumerate(tags) if not TAG.match(t)
    ]
    if len(tags) > MAX_TAGS:
        violations.append((prefix, f"at most {MAX_TAGS} tags"))
    return violations


def validate_device(device: devices_pb2.Device, prefix: str = "device") -> Violations:
    violations = refuse_sim_secrets(device, prefix)
    if not device.model:
        violations.append((f"{prefix}.model", "is required (deviceModels/{id})"))
    if len(device.serial_number) > 128:
        violations.append((f"{prefix}.serial_number", "must be at most 128 characters"))
    if len(device.firmware_version) > 64:
        violations.append((f"{prefix}.firmware_version", "must be at most 64 characters"))
    if not device.HasField("location"):
        violations.append((f"{prefix}.location", "is required"))
    violations += validate_tags(device.tags, f"{prefix}.tags")
    violations += validate_subscription(device.subscription, f"{prefix}.subscription")
    return violations


def subscription_columns(subscription: devices_pb2.Subscription) -> dict[str, Any]:
    return {
        "subscription": json_format.MessageToDict(subscription, preserving_proto_field_name=True),
        "radio_type": int(subscription.radio_type),
        "slice_sst": int(subscription.slice.sst),
        "slice_sd": subscription.slice.sd.upper(),
        "psm_periodic_update_s": seconds(subscription.psm_periodic_update),
    }


def connectivity(row: DeviceRow, reporting_interval_s: float, now: datetime) -> int:
    """Online while it reports within 2.5 of its intervals; a PSM device is asleep, not offline, until
    it misses its periodic update (T3412) by the same margin."""
    if row.last_seen_time is None:
        return int(devices_pb2.CONNECTIVITY_NEVER_SEEN)
    silent = (now - row.last_seen_time).total_seconds()
    if silent <= OFFLINE_AFTER_INTERVALS * reporting_interval_s:
        return int(devices_pb2.CONNECTIVITY_ONLINE)
    if row.psm_periodic_update_s and silent <= OFFLINE_AFTER_INTERVALS * row.psm_periodic_update_s:
        return int(devices_pb2.CONNECTIVITY_SLEEPING)
    return int(devices_pb2.CONNECTIVITY_OFFLINE)


def device_to_proto(row: DeviceRow, reporting_interval_s: float, now: datetime) -> devices_pb2.Device:
    device = devices_pb2.Device(
        name=f"devices/{row.device_id}",
        model=f"deviceModels/{row.model_id}",
        type=row.type,
        serial_number=row.serial_number,
        firmware_version=row.firmware_version,
        tags=row.tags,
        ownership=resources_pb2.Ownership(
            owner_organization=row.owner_organization,
            operator_organization=row.operator_organization,
            maintainer_organization=row.maintainer_organization,
        ),
        location=resources_pb2.GeoPoint(latitude=row.latitude, longitude=row.longitude),
        area_cell=row.area_cell,
        status=row.status,  # type: ignore[arg-type]
        subscription=json_format.ParseDict(row.subscription, devices_pb2.Subscription()),
        connectivity=connectivity(row, reporting_interval_s, now),  # type: ignore[arg-type]
        etag=row.etag,
        create_time=timestamp(row.create_time),
        update_time=timestamp(row.update_time),
    )
    if row.last_radio:
        device.last_radio.CopyFrom(json_format.ParseDict(row.last_radio, devices_pb2.RadioReport()))
    if row.last_seen_time is not None:
        device.last_seen_time.FromDatetime(row.last_seen_time)
    return device


# -- readings --------------------------------------------------------------------------------------

FUTURE_TOLERANCE_S = 5 * 60.0
MAX_AGE_S = 30 * 24 * 3600.0


def reading_problem(
    reading: devices_pb2.Reading,
    index: int,
    specs: dict[str, dict[str, Any]],
    now: datetime,
    prefix: str = "readings",
) -> tuple[str, str] | None:
    """Why a reading is refused (its field and the reason), or None when it is valid."""
    field = f"{prefix}[{index}]"
    if reading.sequence >= 2**63:
        return f"{field}.sequence", "must be below 2^63"
    if not reading.HasField("time"):
        return f"{field}.time", "is required"
    # Compared as epoch seconds: building a datetime per reading costs more than the rest of the checks.
    when = reading.time.seconds + reading.time.nanos / 1e9
    now_s = now.timestamp()
    if when > now_s + FUTURE_TOLERANCE_S:
        return f"{field}.time", "is in the future"
    if when < now_s - MAX_AGE_S:
        return f"{field}.time", "is older than 30 days"
    if not reading.values:
        return f"{field}.values", "carries no metric"
    for metric, value in reading.values.items():
        spec = specs.get(metric)
        if spec is None:
            return f"{field}.values.{metric}", "is not a metric of the device's model"
        if not math.isfinite(value):
            return f"{field}.values.{metric}", "must be a finite number"
        if spec["min"] is not None and value < spec["min"]:
            return f"{field}.values.{metric}", f"{value:g} is below the minimum {spec['min']:g}"
        if spec["max"] is not None and value > spec["max"]:
            return f"{field}.values.{metric}", f"{value:g} is above the maximum {spec['max']:g}"
    return None
