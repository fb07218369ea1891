"""Client-side helpers for tests: read the rich google.rpc.Status a failed call carried, and make
timestamps."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

M = TypeVar("M", bound=Message)


def rich_status(error: grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status a failed call carried in its trailers (asserts there is one)."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error}"
    return status


def detail(status: status_pb2.Status, kind: type[M]) -> Any:
    """The first detail of type `kind` in the status, unpacked, or None."""
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            message = kind()
            packed.Unpack(message)
            return message
    return None


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    info = detail(rich_status(error), error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    return info


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of the BadRequest detail a failed call carried (asserts one)."""
    bad = detail(rich_status(error), error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest), f"no BadRequest detail on {error}"
    return [(violation.field, violation.description) for violation in bad.field_violations]


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call ends with; the test fails if the call succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("the call succeeded; it should have been refused")


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result
