"""FND-3: domain errors become rich statuses; unexpected errors become INTERNAL with an error id only."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.errors import ERROR_DOMAIN, InvalidArgument
from cityos_platform.testing.conformance import CRASH_SECRET
from cityos_platform.testing.status import detail, error_info, rich_status


async def _echo(server, **fields):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        return await stub.Echo(conformance_pb2.EchoRequest(**fields), timeout=5)


@pytest.mark.req("FND-3")
async def test_domain_validation_error_arrives_with_field_violations(conformance_server):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _echo(conformance_server, message="")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rich_status(caught.value)
    assert status.code == code_pb2.INVALID_ARGUMENT
    bad = detail(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [("message", "must not be empty")]
    info = detail(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", ERROR_DOMAIN)


@pytest.mark.req("FND-3")
async def test_domain_not_found_carries_its_reason(conformance_server):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _echo(conformance_server, message="x", outcome=conformance_pb2.OUTCOME_NOT_FOUND)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "ECHO_NOT_FOUND"


@pytest.mark.req("FND-3")
async def test_unexpected_exception_is_internal_with_error_id_and_no_internals(conformance_server, caplog):
    caplog.set_level(logging.ERROR, logger="cityos_platform.interceptor")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _echo(conformance_server, message="boom", outcome=conformance_pb2.OUTCOME_CRASH)
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    error_id = error_info(error).metadata["error_id"]
    assert len(error_id) == 16
    assert error_id in error.details()
    everything_sent = error.details() + repr(error.trailing_metadata()) + repr(error.debug_error_string())
    for leak in (CRASH_SECRET, "RuntimeError", "Traceback", "conformance.py"):
        assert leak not in everything_sent
    # The operators can find the traceback by the id the client was given.
    logged = [r for r in caplog.records if getattr(r, "fields", {}).get("error_id") == error_id]
    assert logged
    assert logged[0].exc_info is not None
    assert CRASH_SECRET in str(logged[0].exc_info[1])


def test_invalid_argument_message_lists_every_violation():
    error = InvalidArgument.field("spot.name", "must look like sites/{site}/spots/{spot}")
    assert "spot.name: must look like" in error.message
    status = error.to_status()
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert detail(status, error_details_pb2.BadRequest).field_violations[0].field == "spot.name"
