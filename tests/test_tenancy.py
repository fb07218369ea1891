"""IDN-2: a user of organization A can neither read nor change organization B's resources — in every
service that exists, checked RPC by RPC from the policy options (see cityos_platform.testing.tenancy).
A new service, or a new RPC, without an example or a stated exemption fails here."""

from __future__ import annotations

from importlib.metadata import entry_points

import grpc
import pytest
from google.protobuf import message_factory, text_format
from google.protobuf.message import Message

from cityos_platform.config import load_settings
from cityos_platform.policy import Policy, service_policies
from cityos_platform.registry import discover
from cityos_platform.tenancy import CITY_WIDE_ROLES
from cityos_platform.testing.fixtures import authenticator_for, bearer
from cityos_platform.testing.tenancy import TenancyExamples

SERVICES = discover()
EXAMPLES = {entry.name: entry for entry in entry_points(group="cityos.tenancy")}
REFUSED = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}
A, B = "org-a", "org-b"


async def _call(
    channel: grpc.aio.Channel, policy: Policy, request: Message, metadata
) -> tuple[grpc.StatusCode, str]:
    """The status and the answer (as text) of one call, whatever the RPC's shape."""
    method = request.DESCRIPTOR.file.pool.FindServiceByName(policy.service).methods_by_name[policy.method]
    response_class = message_factory.GetMessageClass(method.output_type)
    options = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    try:
        if policy.server_streaming:
            stream = channel.unary_stream(policy.full_method, **options)(
                request, metadata=metadata, timeout=10
            )
            answers = [text_format.MessageToString(answer) async for answer in stream]
            return grpc.StatusCode.OK, "\n".join(answers)
        answer = await channel.unary_unary(policy.full_method, **options)(
            request, metadata=metadata, timeout=10
        )
        return grpc.StatusCode.OK, text_format.MessageToString(answer)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""


@pytest.mark.req("IDN-2")
def test_every_service_shows_the_tenancy_check_its_resources():
    assert sorted(EXAMPLES) == sorted(SERVICES), "every service registers a cityos.tenancy entry point"


@pytest.mark.req("IDN-2")
@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_a_user_of_one_organization_neither_reads_nor_changes_anothers_resources(
    name, start_server, dev_issuer, mint, tmp_path
):
    if name not in EXAMPLES:
        pytest.fail(f"{name} registers no cityos.tenancy examples")
    examples: TenancyExamples = EXAMPLES[name].load()
    app = SERVICES[name].load_factory()(load_settings(var_dir=tmp_path, events_poll_interval_s=0.1))
    mounts = await app.start()
    try:
        authenticator = authenticator_for(dev_issuer)
        authenticator.prefixed = dict(getattr(app, "token_verifiers", {}))
        server = await start_server(mounts, authenticator=authenticator)
        policies = service_policies(mount.descriptor for mount in mounts)
        unknown = sorted(set(examples.exempt) - set(policies))
        assert not unknown, f"exemptions for RPCs {name} does not serve: {unknown}"

        def token(organization, roles):
            return bearer(mint(f"users/{organization}-person", organization, list(roles)))

        async with grpc.aio.insecure_channel(server.address) as channel:
            case = await examples.seed(channel, token, B)
            checked = []
            uncovered = [
                method
                for method, policy in policies.items()
                if not policy.public and method not in examples.exempt and method not in case.requests
            ]
            assert not uncovered, f"{name}: RPCs with neither a tenancy example nor an exemption: {uncovered}"
            for method, request in case.requests.items():
                policy = policies[method]
                roles = [role for role in policy.roles if role not in CITY_WIDE_ROLES]
                assert roles, f"{method} is called by city-wide roles only: exempt it and say why"
                code_a, answer_a = await _call(channel, policy, request, token(A, roles))
                if method in case.listings:
                    assert code_a == grpc.StatusCode.OK, f"{method} as A: {code_a} {answer_a}"
                    leaked = [text for text in case.names if text in answer_a]
                    assert not leaked, f"{method} showed A organization B's {leaked}"
                else:
                    assert code_a in REFUSED, f"{method} let A reach B's resource: {code_a} {answer_a[:200]}"
                # The control: the same call as B works (so A's refusal was about tenancy).
                code_b, answer_b = await _call(channel, policy, request, token(B, roles))
                assert code_b == grpc.StatusCode.OK, (
                    f"{method}: the control call as B failed: {code_b} {answer_b}"
                )
                if method in case.listings:
                    assert answer_a != answer_b, f"{method}: B's answer should show B's resources"
                checked.append(method)
        # A process that serves no RPC of its own (the lake exporter: health only) has nothing to check.
        assert checked or not policies, f"{name}: no RPC was checked"
    finally:
        await app.stop()
