"""Structured logs: one JSON object per line, with the current trace and span ids.

`configure_logging()` installs the formatter on the root logger once per process. Extra fields passed
as `logger.info("msg", extra={"fields": {...}})` are merged into the line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

SERVICE_FIELD = "service"


def trace_ids() -> tuple[str, str]:
    """The current trace id and span id as hex, or empty strings outside a span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "", ""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, service, trace_id, span_id, fields."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = getattr(record, "trace_id", ""), getattr(record, "span_id", "")
        if not trace_id:
            trace_id, span_id = trace_ids()
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.service:
            line[SERVICE_FIELD] = self.service
        if trace_id:
            line["trace_id"] = trace_id
            line["span_id"] = span_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TraceContextFilter(logging.Filter):
    """Stamps the trace ids on the record where it is created (the span is current there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "trace_id", ""):
            record.trace_id, record.span_id = trace_ids()
        return True


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Send the process's logs to stderr, as JSON lines (production) or plain text (console)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
