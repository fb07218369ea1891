"""The one interceptor chain every CityOS server runs.

For every RPC with a declared policy, in this order:
1. a server span (W3C `traceparent` from the caller is continued) that is current for the handler,
   so logs carry its trace id;
2. the caller: a verified bearer token or the anonymous principal (UNAUTHENTICATED for a bad token),
   held to the method's declared policy (PERMISSION_DENIED);
3. the per-RPC request size limit;
4. admission: unary calls against the unary concurrency limit, streams against their class's caps
   per caller and in total; over a limit, RESOURCE_EXHAUSTED with RetryInfo before the handler runs;
5. the default deadline for a unary call whose client set none;
6. error mapping: a `CityOSError` becomes its rich `google.rpc.Status`; any other exception becomes
   INTERNAL with an error id (logged with the traceback, never sent);
7. the duration metric, one JSON log line on `cityos.access`, and one record in the hash-chained
   access log (time, subject, organization, method, resource, status, trace id).

Platform-owned services (health, reflection) pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from cityos.common.v1 import policy_pb2
from cityos_platform.accesslog import AccessLog, AccessRecord
from cityos_platform.auth import Principal
from cityos_platform.authz import Authenticator, authorize
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.errors import (
    CityOSError,
    DeadlineExceeded,
    ResourceExhausted,
    Unavailable,
    internal_status,
    trailing_metadata,
)
from cityos_platform.policy import Policy
from cityos_platform.telemetry import Telemetry

access_log = logging.getLogger("cityos.access")
log = logging.getLogger(__name__)

# Codes that mean the server failed (span status ERROR); the rest are the caller's doing.
_SERVER_FAULTS = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass
class CallInfo:
    """What the runtime knows about the call in progress; handlers read it with `current_call()`."""

    policy: Policy
    caller: str
    peer: str
    metadata: Mapping[str, str | bytes]
    principal: Principal = field(default_factory=Principal.anonymous)
    peer_certificate: bytes | None = None  # the TLS client certificate (PEM), under mutual TLS
    span: trace.Span | None = None
    finished: bool = False  # recorded (span, metric, access log) already
    resource: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK
    error_id: str = ""
    started: float = field(default_factory=time.perf_counter)


_current: ContextVar[CallInfo | None] = ContextVar("cityos_call", default=None)


def current_call() -> CallInfo:
    """The call being served (inside a handler); raises LookupError outside one."""
    info = _current.get()
    if info is None:
        raise LookupError("not inside a CityOS RPC")
    return info


def peer_host(peer: str) -> str:
    """`ipv4:127.0.0.1:5555` -> `127.0.0.1`; `ipv6:[::1]:5555` -> `::1`; `unix:/x` -> `unix:/x`."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


QUOTA_TRACKED = 10_000


class Limits:
    """Admission control: unary in-flight limit, and stream caps per class, per caller and in total.

    The event loop is single-threaded, so plain counters are exact.
    """

    def __init__(self, settings: Settings) -> None:
        self.unary_limit = settings.unary_concurrency
        self.stream_cap_per_caller = settings.stream_cap_per_caller
        self.stream_cap_total = settings.stream_cap_total
        self.unary_inflight = 0
        self.streams_total: dict[int, int] = defaultdict(int)
        self.streams_by_caller: dict[tuple[int, str], int] = defaultdict(int)
        # Quota callers: subject -> (the clock minute counted, calls in it).
        self.quota_used: dict[str, tuple[int, int]] = {}

    def admit_unary(self) -> None:
        if self.unary_inflight >= self.unary_limit:
            raise ResourceExhausted(
                f"server busy: {self.unary_limit} unary calls in flight; retry shortly",
                reason="UNARY_CONCURRENCY_LIMIT",
                metadata={"limit": str(self.unary_limit)},
                retry_after_s=0.2,
            )
        self.unary_inflight += 1

    def admit_quota(self, principal: Principal, now_s: float) -> None:
        """A caller with a quota (an API key's token) gets at most `quota_per_minute` calls in each
        clock minute, counted in this process (so per replica)."""
        quota = principal.quota_per_minute
        if not quota:
            return
        minute = int(now_s // 60)
        window, used = self.quota_used.get(principal.subject, (minute, 0))
        if window != minute:
            window, used = minute, 0
        if used >= quota:
            raise ResourceExhausted(
                f"this API key's quota of {quota} calls a minute is used up",
                reason="API_KEY_QUOTA",
                metadata={"quota_per_minute": str(quota), "subject": principal.subject},
                retry_after_s=max(0.1, (minute + 1) * 60 - now_s),
            )
        self.quota_used[principal.subject] = (window, used + 1)
        if len(self.quota_used) > QUOTA_TRACKED:
            # Forget the callers of past minutes (their counts no longer matter).
            for subject in [s for s, (w, _) in self.quota_used.items() if w != minute]:
                del self.quota_used[subject]

    def release_unary(self) -> None:
        self.unary_inflight -= 1

    def admit_stream(self, policy: Policy, caller: str) -> None:
        cls = policy.stream_class
        if self.streams_by_caller[(cls, caller)] >= self.stream_cap_per_caller:
            raise ResourceExhausted(
                f"too many open {policy.stream_class_name} streams for this caller "
                f"(cap {self.stream_cap_per_caller}); close one first",
                reason="STREAM_CAP_PER_CALLER",
                metadata={"stream_class": policy.stream_class_name, "cap": str(self.stream_cap_per_caller)},
                retry_after_s=1.0,
            )
        if self.streams_total[cls] >= self.stream_cap_total:
            raise ResourceExhausted(
                f"server holds its maximum of {self.stream_cap_total} {policy.stream_class_name} streams",
                reason="STREAM_CAP_TOTAL",
                metadata={"stream_class": policy.stream_class_name, "cap": str(self.stream_cap_total)},
                retry_after_s=5.0,
            )
        self.streams_by_caller[(cls, caller)] += 1
        self.streams_total[cls] += 1

    def release_stream(self, policy: Policy, caller: str) -> None:
        key = (policy.stream_class, caller)
        self.streams_by_caller[key] -= 1
        if self.streams_by_caller[key] <= 0:
            del self.streams_by_caller[key]
        self.streams_total[policy.stream_class] -= 1


class RuntimeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Applies policy, limits, telemetry, error mapping and access logging to every declared RPC."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        settings: Settings,
        telemetry: Telemetry,
        service_label: str = "",
        *,
        authenticator: Authenticator | None = None,
        access_records: AccessLog | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.policies = dict(policies)
        self.settings = settings
        self.telemetry = telemetry
        self.limits = Limits(settings)
        self.service_label = service_label
        self.authenticator = authenticator
        self.access_records = access_records
        # The generated handlers are built once per server, so their wrappers are too.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        # Set when the server starts draining: watch streams (endless by nature, resumable by cursor)
        # end at once with UNAVAILABLE instead of holding the drain for its whole grace period.
        self.draining = asyncio.Event()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        policy = self.policies.get(details.method)
        if handler is None or policy is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, policy)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, policy: Policy) -> grpc.RpcMethodHandler:
        kind = (handler.request_streaming, handler.response_streaming)
        wrap: dict[tuple[bool, bool], tuple[Callable[..., Any], Callable[..., Any], str]] = {
            (False, False): (grpc.unary_unary_rpc_method_handler, self._unary, "unary_unary"),
            (True, False): (grpc.stream_unary_rpc_method_handler, self._unary, "stream_unary"),
            (False, True): (grpc.unary_stream_rpc_method_handler, self._stream, "unary_stream"),
            (True, True): (grpc.stream_stream_rpc_method_handler, self._stream, "stream_stream"),
        }
        make_handler, wrapper, attribute = wrap[kind]
        return make_handler(
            wrapper(getattr(handler, attribute), policy),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    # -- the two shapes -------------------------------------------------------------------------

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], policy: Policy
    ) -> Callable[..., Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            info = self._begin(policy, context)
            token = _current.set(info)
            span = info.span = self._start_span(policy, context)
            admitted = False
            try:
                with trace.use_span(span, end_on_exit=False):
                    try:
                        request = await self._admit(info, request, stream=False)
                        admitted = True
                        timeout = self._default_timeout(policy, context)
                        if timeout is None:
                            return await behavior(request, context)
                        try:
                            async with asyncio.timeout(timeout):  # no extra task, unlike wait_for
                                return await behavior(request, context)
                        except TimeoutError:
                            raise DeadlineExceeded(
                                f"the call did not finish within the default deadline of {timeout:g} s; "
                                "set a deadline on the call to choose another",
                                reason="DEFAULT_DEADLINE_EXCEEDED",
                            ) from None
                    except grpc.aio.AbortError:
                        raise
                    except asyncio.CancelledError:
                        info.code = grpc.StatusCode.CANCELLED
                        raise
                    except Exception as error:
                        await self._map_exception(context, info, error)
                    finally:
                        if admitted:
                            self.limits.release_unary()
            finally:
                _current.reset(token)
                if not info.finished:
                    self._finish(span, info, context)

        return handle

    def _stream(
        self, behavior: Callable[..., AsyncIterator[Any]], policy: Policy
    ) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            info = self._begin(policy, context)
            token = _current.set(info)
            span = info.span = self._start_span(policy, context)
            admitted = False
            try:
                with trace.use_span(span, end_on_exit=False):
                    try:
                        request = await self._admit(info, request, stream=True)
                        admitted = True
                        responses = behavior(request, context)
                        if policy.stream_class == policy_pb2.STREAM_CLASS_WATCH:
                            responses = _until(responses, self.draining)
                        async for response in responses:
                            yield response
                    except grpc.aio.AbortError:
                        raise
                    except (asyncio.CancelledError, GeneratorExit):
                        info.code = grpc.StatusCode.CANCELLED
                        raise
                    except Exception as error:
                        await self._map_exception(context, info, error)
                    finally:
                        if admitted:
                            self.limits.release_stream(policy, info.caller)
            finally:
                if not info.finished:
                    self._finish(span, info, context)
                # A stream the client cancelled is closed by grpc from another context than the one
                # that started it: the reset then raises ValueError, and the call is recorded already.
                with contextlib.suppress(ValueError):
                    _current.reset(token)

        return handle

    # -- steps ----------------------------------------------------------------------------------

    def _begin(self, policy: Policy, context: grpc.aio.ServicerContext) -> CallInfo:
        metadata = {key: value for key, value in (context.invocation_metadata() or ())}
        peer = context.peer() or ""
        certificates = (
            (context.auth_context() or {}).get("x509_pem_cert") if self.settings.tls_enabled else None
        )
        return CallInfo(
            policy=policy,
            caller=peer_host(peer),
            peer=peer,
            metadata=metadata,
            peer_certificate=certificates[0] if certificates else None,
        )

    async def _admit(self, info: CallInfo, request: Any, *, stream: bool) -> Any:
        """Authenticate, authorize, check the size, then take a unary or stream slot (taken last, so
        nothing before it needs to give one back)."""
        policy = info.policy
        if self.authenticator is not None:
            info.principal = await self.authenticator.principal(info.metadata, info.peer_certificate)
            if not info.principal.is_anonymous:
                info.caller = info.principal.subject
        authorize(policy, info.principal)
        self.limits.admit_quota(info.principal, self.clock.timestamp())
        if not policy.client_streaming and policy.resource_field:
            info.resource = resource_of(request, policy.resource_field)
        request = self._checked(request, policy, policy.client_streaming)
        if stream:
            self.limits.admit_stream(policy, info.caller)
        else:
            self.limits.admit_unary()
        return request

    def _start_span(self, policy: Policy, context: grpc.aio.ServicerContext) -> trace.Span:
        carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return self.telemetry.tracer.start_span(
            f"{policy.service}/{policy.method}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": policy.service, "rpc.method": policy.method},
        )

    def _checked(self, request: Any, policy: Policy, client_streaming: bool) -> Any:
        limit = policy.max_request_bytes
        if not limit:
            return request
        if client_streaming:
            return _size_checked_stream(request, limit)
        _check_size(request, limit)
        return request

    def _default_timeout(self, policy: Policy, context: grpc.aio.ServicerContext) -> float | None:
        if context.time_remaining() is not None:
            return None  # the client's deadline governs; gRPC cancels the handler when it passes
        return policy.default_deadline_s or self.settings.unary_deadline_s

    async def _map_exception(
        self, context: grpc.aio.ServicerContext, info: CallInfo, error: Exception
    ) -> None:
        if isinstance(error, CityOSError):
            await self._abort(context, info, error)
        info.error_id = uuid.uuid4().hex[:16]
        log.error(
            "unexpected error in %s (error id %s)",
            info.policy.full_method,
            info.error_id,
            exc_info=error,
            extra={"fields": {"error_id": info.error_id, "method": info.policy.full_method}},
        )
        status = internal_status(info.error_id)
        info.code = grpc.StatusCode.INTERNAL
        self._finish_before_abort(info, context)
        await context.abort(
            grpc.StatusCode.INTERNAL, status.message, trailing_metadata=trailing_metadata(status)
        )

    async def _abort(self, context: grpc.aio.ServicerContext, info: CallInfo, error: CityOSError) -> None:
        status = error.to_status()
        info.code = error.code
        self._finish_before_abort(info, context)
        await context.abort(error.code, status.message, trailing_metadata=trailing_metadata(status))

    def _finish_before_abort(self, info: CallInfo, context: grpc.aio.ServicerContext) -> None:
        """grpc.aio sends the status inside `abort()`, so the caller may act on it before this handler
        unwinds: record the call first, so whatever the caller does next finds it in the access log."""
        if info.span is not None and not info.finished:
            self._finish(info.span, info, context)

    def _finish(self, span: trace.Span, info: CallInfo, context: grpc.aio.ServicerContext) -> None:
        info.finished = True
        code = info.code
        if code == grpc.StatusCode.OK:
            reported = context.code()
            if isinstance(reported, grpc.StatusCode):
                code = reported
        elapsed_ms = (time.perf_counter() - info.started) * 1000
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, code.name))
        trace_id = format(span.get_span_context().trace_id, "032x")
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": info.policy.service,
            "rpc.method": info.policy.method,
            "rpc.grpc.status_code": code.value[0],
        }
        self.telemetry.duration.record(elapsed_ms, attributes)
        principal = info.principal
        if access_log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "method": info.policy.full_method,
                "caller": info.caller,
                "organization": principal.organization,
                "resource": info.resource,
                "code": code.name,
                "duration_ms": round(elapsed_ms, 3),
            }
            if info.error_id:
                fields["error_id"] = info.error_id
            span_id = format(span.get_span_context().span_id, "016x")
            access_log.info(
                "%s %s %.1fms",
                info.policy.full_method,
                code.name,
                elapsed_ms,
                extra={"fields": fields, "trace_id": trace_id, "span_id": span_id},
            )
        if self.access_records is not None:
            self.access_records.record(
                AccessRecord(
                    time=datetime.now(UTC).isoformat(timespec="milliseconds"),
                    subject=principal.subject,
                    organization=principal.organization,
                    client=principal.client,
                    on_behalf_of=principal.on_behalf_of,
                    method=info.policy.full_method,
                    resource=info.resource,
                    code=code.name,
                    trace_id=trace_id,
                    duration_ms=round(elapsed_ms, 3),
                    peer=info.peer,
                )
            )
        span.end()


def resource_of(request: Any, path: str) -> str:
    """The value of a dotted field path of a request (the policy's `resource_field`), as text."""
    value: Any = request
    for part in path.split("."):
        value = getattr(value, part, "")
    return value if isinstance(value, str) else str(value)


async def _until(responses: AsyncIterator[Any], draining: asyncio.Event) -> AsyncIterator[Any]:
    """The responses of a watch stream until the server drains; then UNAVAILABLE with a retry hint, so
    the client resumes from its cursor (on another replica, or on this one once it is back)."""
    stop = asyncio.ensure_future(draining.wait())
    following: asyncio.Future[Any] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(responses))
            done, _ = await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
            if following not in done:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following
                raise Unavailable(
                    "the server is shutting down; resume from your last cursor",
                    reason="SERVER_DRAINING",
                    retry_after_s=1.0,
                )
            try:
                yield following.result()
            except StopAsyncIteration:
                return
    finally:
        stop.cancel()
        if following is not None and not following.done():
            # This handler was cancelled (the server stopping) while the stream awaited its next item:
            # stop that step first, or closing the stream fails with "asynchronous generator is
            # already running" and the call ends INTERNAL with a stack trace in the log.
            following.cancel()
            with contextlib.suppress(BaseException):
                await following
        aclose = getattr(responses, "aclose", None)
        if aclose is not None:
            await aclose()


def _check_size(message: Message, limit: int) -> None:
    size = message.ByteSize()
    if size > limit:
        raise ResourceExhausted(
            f"request of {size} bytes exceeds this method's limit of {limit} bytes",
            reason="REQUEST_TOO_LARGE",
            metadata={"limit_bytes": str(limit), "size_bytes": str(size)},
        )


async def _size_checked_stream(requests: AsyncIterator[Message], limit: int) -> AsyncIterator[Message]:
    async for message in requests:
        _check_size(message, limit)
        yield message
