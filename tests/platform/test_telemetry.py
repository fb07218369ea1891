"""FND-6: every RPC produces a span and a duration metric, and its access-log line carries the trace id."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from cityos.testing.v1 import conformance_pb2, conformance_pb2_grpc
from cityos_platform.logs import JsonFormatter, TraceContextFilter
from cityos_platform.telemetry import DURATION_METRIC


class JsonLines(logging.Handler):
    """Collects what the production formatter writes."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("test"))
        self.addFilter(TraceContextFilter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_lines():
    handler = JsonLines()
    logger = logging.getLogger("cityos.access")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.mark.req("FND-6")
async def test_every_rpc_has_a_span_a_duration_point_and_a_traced_log_line(
    conformance_server, telemetry_capture, access_lines
):
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with grpc.aio.insecure_channel(conformance_server.address) as channel:
        stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
        await stub.Echo(
            conformance_pb2.EchoRequest(message="hi"),
            timeout=5,
            metadata=(("traceparent", f"00-{parent_trace}-00f067aa0ba902b7-01"),),
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Echo(conformance_pb2.EchoRequest(message=""), timeout=5)
        ticks = [t async for t in stub.StreamTicks(conformance_pb2.StreamTicksRequest(count=3), timeout=5)]
        assert len(ticks) == 3

    spans = telemetry_capture.spans.get_finished_spans()
    assert [s.name for s in spans] == [
        "cityos.testing.v1.ConformanceService/Echo",
        "cityos.testing.v1.ConformanceService/Echo",
        "cityos.testing.v1.ConformanceService/StreamTicks",
    ]
    assert [s.attributes["rpc.grpc.status_code"] for s in spans] == [0, 3, 0]
    # The caller's trace is continued, not restarted.
    assert format(spans[0].context.trace_id, "032x") == parent_trace

    points = telemetry_capture.metric_points(DURATION_METRIC)
    counted = {(p.attributes["rpc.method"], p.attributes["rpc.grpc.status_code"]): p.count for p in points}
    assert counted == {("Echo", 0): 1, ("Echo", 3): 1, ("StreamTicks", 0): 1}

    assert [line["code"] for line in access_lines] == ["OK", "INVALID_ARGUMENT", "OK"]
    for line, span in zip(access_lines, spans, strict=True):
        assert line["trace_id"] == format(span.context.trace_id, "032x")
        assert line["span_id"] == format(span.context.span_id, "016x")
        assert line["method"] == f"/{span.name}"
        assert line["duration_ms"] >= 0


async def test_handler_logs_carry_the_trace_id_of_the_rpc(conformance_server, telemetry_capture):
    handler = JsonLines()
    logger = logging.getLogger("cityos_platform.interceptor")
    logger.addHandler(handler)
    try:
        async with grpc.aio.insecure_channel(conformance_server.address) as channel:
            stub = conformance_pb2_grpc.ConformanceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Echo(
                    conformance_pb2.EchoRequest(message="x", outcome=conformance_pb2.OUTCOME_CRASH), timeout=5
                )
    finally:
        logger.removeHandler(handler)
    (span,) = telemetry_capture.spans.get_finished_spans()
    (line,) = handler.lines
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["level"] == "ERROR"
    assert "exception" in line
