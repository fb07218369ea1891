"""Method policies, read from the `(cityos.common.v1.policy)` option on each RPC's descriptor.

The API declares, per RPC, its permission, whether it is public, its stream class, whether it is
idempotent, which field names the resource, and its size and deadline limits. This module turns the
descriptors into a table the interceptors use; a mount with an RPC that declares no policy (or a
contradictory one) is refused before the server starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from cityos.common.v1 import policy_pb2


class PolicyError(Exception):
    """An RPC has no policy or an inconsistent one; the server must not start."""


@dataclass(frozen=True)
class Policy:
    """The declared policy of one RPC, with the server defaults applied by the caller."""

    full_method: str  # "/cityos.parking.v1.ParkingService/GetSpot"
    service: str
    method: str
    permission: str
    roles: tuple[str, ...]
    public: bool
    stream_class: int  # policy_pb2.StreamClass value; 0 for unary
    idempotent: bool
    resource_field: str
    max_request_bytes: int  # 0: the server default
    default_deadline_s: float | None  # None: the server default
    client_streaming: bool
    server_streaming: bool

    @property
    def is_stream(self) -> bool:
        return self.client_streaming or self.server_streaming

    @property
    def stream_class_name(self) -> str:
        return policy_pb2.StreamClass.Name(self.stream_class)  # type: ignore[arg-type]


def method_policy(method: MethodDescriptor) -> Policy:
    """The policy declared on one method, validated."""
    full_method = f"/{method.containing_service.full_name}/{method.name}"
    options = method.GetOptions()
    if not options.HasExtension(policy_pb2.policy):
        raise PolicyError(f"{full_method}: no (cityos.common.v1.policy) option declared")
    declared: policy_pb2.MethodPolicy = options.Extensions[policy_pb2.policy]
    is_stream = method.client_streaming or method.server_streaming
    if is_stream and declared.stream_class == policy_pb2.STREAM_CLASS_UNSPECIFIED:
        raise PolicyError(f"{full_method}: a streaming RPC must declare its stream_class")
    if not is_stream and declared.stream_class != policy_pb2.STREAM_CLASS_UNSPECIFIED:
        raise PolicyError(f"{full_method}: a unary RPC cannot declare a stream_class")
    if not declared.public and not declared.permission:
        raise PolicyError(f"{full_method}: a non-public RPC must declare the permission it requires")
    if declared.public and declared.permission:
        raise PolicyError(f"{full_method}: a public RPC declares no permission")
    return Policy(
        full_method=full_method,
        service=method.containing_service.full_name,
        method=method.name,
        permission=declared.permission,
        roles=tuple(declared.roles),
        public=declared.public,
        stream_class=declared.stream_class,
        idempotent=declared.idempotent,
        resource_field=declared.resource_field,
        max_request_bytes=declared.max_request_bytes,
        default_deadline_s=(declared.default_deadline_ms / 1000) if declared.default_deadline_ms else None,
        client_streaming=method.client_streaming,
        server_streaming=method.server_streaming,
    )


def service_policies(services: Iterable[ServiceDescriptor]) -> dict[str, Policy]:
    """Every RPC of the given services by full method path; raises PolicyError listing all faults."""
    table: dict[str, Policy] = {}
    faults: list[str] = []
    for service in services:
        for method in service.methods:
            try:
                policy = method_policy(method)
            except PolicyError as error:
                faults.append(str(error))
                continue
            table[policy.full_method] = policy
    if faults:
        raise PolicyError("refusing to serve RPCs without a valid policy: " + "; ".join(faults))
    return table
