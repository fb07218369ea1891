"""What the exporter shows the cross-service tenancy check (`cityos_platform.testing.tenancy`): nothing
to seed and no RPC to exempt, because it mounts no RPC of its own — the server adds only gRPC health and
reflection, which are public. Its only calls are outgoing (every service's StreamEvents and the
telemetry feed, as the city-wide client `cityos-exporter`)."""

from __future__ import annotations

import grpc

from cityos_platform.testing.tenancy import TenancyCase, TenancyExamples, TokenFor


async def _seed(channel: grpc.aio.Channel, token: TokenFor, organization: str) -> TenancyCase:
    return TenancyCase()


EXAMPLES = TenancyExamples(seed=_seed)
