"""A thin client of the devices service's JobService: control commands and schedule steps reach the
controllers as devices jobs.

The channel carries this service's own token (`cityos-streetlights`, a `service` principal acting
city-wide; `cityos_platform.peers`). Every call has a deadline. What goes wrong on the way is turned into
a platform error the caller of *our* RPC can act on, never a stack trace:

- the devices service (or the issuer of our token) cannot be reached, is overloaded, or the call ran
  out of time: `DevicesUnavailable` (UNAVAILABLE with RetryInfo) — nothing was changed here, retry;
- the issuer or the devices service refuses our credentials: UNAVAILABLE too (reason
  `DEVICES_REFUSED_CREDENTIALS`, a deployment problem an operator fixes, so a longer retry delay);
- a job id already taken by another request: ALREADY_EXISTS `JOB_EXISTS`;
- any other refusal (a device the devices service does not know, a job it finds invalid):
  FAILED_PRECONDITION `DEVICES_REFUSED` with the devices service's own message and reason.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cityos.devices.v1 import devices_pb2, devices_pb2_grpc
from cityos_platform.errors import AlreadyExists, CityOSError, FailedPrecondition, Unavailable
from cityos_platform.peers import TokenError, TokenRefused

DEADLINE_S = 10.0
RETRY_AFTER_S = 5.0
# Codes after which the same call may well succeed later.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
CREDENTIALS = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class DevicesUnavailable(Unavailable):
    """The devices service cannot be reached now; nothing was changed."""


def _peer_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of the devices service's rich status, when it sent one."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a trailer that does not match the status: ignore the details
        return ""
    if status is None:
        return ""
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return str(info.reason)
    return ""


def peer_error(error: grpc.aio.AioRpcError | TokenError, what: str) -> CityOSError:
    """The platform error for a failed call to the devices service (`what`: e.g. "creating jobs/x")."""
    if isinstance(error, TokenRefused):
        return DevicesUnavailable(
            f"the devices service cannot be used while {what}: our token was refused ({error.error}); "
            "the operators must fix the service's client credentials",
            reason="DEVICES_REFUSED_CREDENTIALS",
            retry_after_s=60.0,
        )
    if isinstance(error, TokenError):
        return DevicesUnavailable(
            f"the devices service cannot be used while {what}: no token ({error}); try again",
            reason="DEVICES_UNAVAILABLE",
            retry_after_s=RETRY_AFTER_S,
        )
    code, details = error.code(), error.details() or ""
    reason = _peer_reason(error)
    metadata = {"devices_code": code.name, **({"devices_reason": reason} if reason else {})}
    if code in TRANSIENT:
        return DevicesUnavailable(
            f"the devices service did not answer while {what} ({code.name}); nothing was changed, try again",
            reason="DEVICES_UNAVAILABLE",
            metadata=metadata,
            retry_after_s=RETRY_AFTER_S,
        )
    if code in CREDENTIALS:
        return DevicesUnavailable(
            f"the devices service refused this service's credentials while {what} ({code.name}: {details})",
            reason="DEVICES_REFUSED_CREDENTIALS",
            metadata=metadata,
            retry_after_s=60.0,
        )
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExists(f"the devices service: {details}", reason="JOB_EXISTS", metadata=metadata)
    return FailedPrecondition(
        f"the devices service refused {what}: {details}", reason="DEVICES_REFUSED", metadata=metadata
    )


class DeviceJobs:
    """JobService over `channel`; `close()` closes the channel only when this client `owned` it."""

    def __init__(self, channel: grpc.aio.Channel, *, owned: bool, deadline_s: float = DEADLINE_S) -> None:
        self.channel = channel
        self.owned = owned
        self.deadline_s = deadline_s
        self._stub = devices_pb2_grpc.JobServiceStub(channel)

    async def create_job(self, job_id: str, job: devices_pb2.Job, request_id: str) -> devices_pb2.Job:
        """Creates (and starts) `jobs/{job_id}`; a repeat with the same request_id and job returns it."""
        request = devices_pb2.CreateJobRequest(job=job, job_id=job_id, request_id=request_id)
        try:
            created: devices_pb2.Job = await self._stub.CreateJob(request, timeout=self.deadline_s)
        except (grpc.aio.AioRpcError, TokenError) as error:
            raise peer_error(error, f"creating jobs/{job_id}") from None
        return created

    async def get_job(self, name: str) -> devices_pb2.Job:
        try:
            job: devices_pb2.Job = await self._stub.GetJob(
                devices_pb2.GetJobRequest(name=name), timeout=self.deadline_s
            )
        except (grpc.aio.AioRpcError, TokenError) as error:
            raise peer_error(error, f"reading {name}") from None
        return job

    async def cancel_job(self, name: str) -> devices_pb2.Job:
        """Stops the job (no further device is started); a finished job is returned as it is."""
        try:
            job: devices_pb2.Job = await self._stub.CancelJob(
                devices_pb2.CancelJobRequest(name=name), timeout=self.deadline_s
            )
        except (grpc.aio.AioRpcError, TokenError) as error:
            raise peer_error(error, f"cancelling {name}") from None
        return job

    async def close(self) -> None:
        if self.owned:
            await self.channel.close()
