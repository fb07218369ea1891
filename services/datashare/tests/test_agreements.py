"""DSH-1: the agreement lifecycle — request, approve (with narrowing), reject, revoke, expire — every
transition recorded in the agreement's history and emitted as an event; who may take each step."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from cityos.common.v1 import events_pb2, events_pb2_grpc
from cityos.datashare.v1 import datashare_pb2 as pb
from cityos_datashare.agreements import expire_due
from cityos_datashare.testing import CONSUMER, OWNER, stamp
from cityos_platform.testing.status import field_violations as _violations

pytestmark = pytest.mark.req("DSH-1")


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    return [field for field, _ in _violations(error)]


async def _events(share) -> list[events_pb2.Event]:  # type: ignore[no-untyped-def]
    stub = events_pb2_grpc.EventServiceStub(share.channel)
    stream = stub.StreamEvents(events_pb2.StreamEventsRequest(follow=False), metadata=share.owner)
    return [event async for item in stream for event in item.events]


async def test_approval_may_narrow_the_request_and_every_transition_is_recorded(share):
    requested = share.terms(["site", "status", "time", "area_cell"], areas=["rongdong", "rongxi"])
    agreement = await share.request("parking_occupancy", requested)
    assert agreement.state == pb.AGREEMENT_STATE_REQUESTED
    assert agreement.consumer_organization == CONSUMER
    assert agreement.owner_organization == OWNER
    granted = share.terms(["site", "status"], days=10, areas=["rongdong"])
    approved = await share.agreements.ApproveAgreement(
        pb.ApproveAgreementRequest(
            name=agreement.name, terms=granted, reason="rongdong only", etag=agreement.etag
        ),
        metadata=share.owner,
    )
    assert approved.state == pb.AGREEMENT_STATE_APPROVED
    assert list(approved.terms.columns) == ["site", "status"]
    assert list(approved.terms.areas) == ["rongdong"]
    assert list(approved.requested_terms.columns) == ["site", "status", "time", "area_cell"]
    steps = [(h.from_state, h.to_state, h.actor, h.actor_organization) for h in approved.history]
    assert steps == [
        (pb.AGREEMENT_STATE_UNSPECIFIED, pb.AGREEMENT_STATE_REQUESTED, "users/eve", CONSUMER),
        (pb.AGREEMENT_STATE_REQUESTED, pb.AGREEMENT_STATE_APPROVED, "users/olga", OWNER),
    ]
    assert approved.history[1].reason == "rongdong only"
    assert list(approved.history[1].terms.columns) == ["site", "status"]
    # The consumer reads the same agreement; its events are on the stream.
    seen = await share.agreements.GetAgreement(
        pb.GetAgreementRequest(name=agreement.name), metadata=share.consumer
    )
    assert seen == approved
    types = [event.type for event in await _events(share) if event.subject == agreement.name]
    assert types == ["datashare.agreement.requested", "datashare.agreement.approved"]


async def test_an_approval_cannot_widen_the_request(share):
    agreement = await share.request("parking_occupancy", share.terms(["site", "status"], areas=["rongdong"]))
    wider = share.terms(["site", "status", "spot"], days=400, areas=["rongxi"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await share.agreements.ApproveAgreement(
            pb.ApproveAgreementRequest(name=agreement.name, terms=wider), metadata=share.owner
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"terms.columns", "terms.areas", "terms.expire_time"} <= set(field_violations(refused.value))


async def test_reject_and_revoke_need_a_reason_and_are_recorded(share):
    first = await share.request("parking_occupancy", share.terms(["site"]))
    with pytest.raises(grpc.aio.AioRpcError) as no_reason:
        await share.agreements.RejectAgreement(
            pb.RejectAgreementRequest(name=first.name), metadata=share.owner
        )
    assert "reason" in field_violations(no_reason.value)
    rejected = await share.agreements.RejectAgreement(
        pb.RejectAgreementRequest(name=first.name, reason="purpose too broad"), metadata=share.owner
    )
    assert rejected.state == pb.AGREEMENT_STATE_REJECTED
    assert rejected.history[-1].reason == "purpose too broad"
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await share.agreements.ApproveAgreement(
            pb.ApproveAgreementRequest(name=first.name), metadata=share.owner
        )
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    second = await share.approved("parking_occupancy", share.terms(["site"]))
    revoked = await share.agreements.RevokeAgreement(
        pb.RevokeAgreementRequest(name=second.name, reason="study ended early"), metadata=share.owner
    )
    assert revoked.state == pb.AGREEMENT_STATE_REVOKED
    assert [h.to_state for h in revoked.history] == [
        pb.AGREEMENT_STATE_REQUESTED,
        pb.AGREEMENT_STATE_APPROVED,
        pb.AGREEMENT_STATE_REVOKED,
    ]
    types = [event.type for event in await _events(share) if event.subject == second.name]
    assert types[-1] == "datashare.agreement.revoked"


async def test_an_approved_agreement_expires_and_the_expiry_is_recorded(share):
    agreement = await share.approved("parking_occupancy", share.terms(["site"], days=1))
    assert await expire_due(share.app.db) == []
    share.clock.advance(days=1, seconds=1)
    assert await expire_due(share.app.db) == [agreement.name.split("/")[1]]
    expired = await share.agreements.GetAgreement(
        pb.GetAgreementRequest(name=agreement.name), metadata=share.owner
    )
    assert expired.state == pb.AGREEMENT_STATE_EXPIRED
    assert expired.history[-1].actor == "system"
    assert await expire_due(share.app.db) == []  # once


async def test_only_the_owner_decides_and_strangers_see_nothing(share):
    agreement = await share.request("parking_occupancy", share.terms(["site"]))
    for metadata in (share.consumer_admin,):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await share.agreements.ApproveAgreement(
                pb.ApproveAgreementRequest(name=agreement.name), metadata=metadata
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await share.agreements.GetAgreement(
            pb.GetAgreementRequest(name=agreement.name), metadata=share.stranger
        )
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await share.agreements.ListAgreements(pb.ListAgreementsRequest(), metadata=share.stranger)
    assert list(listed.agreements) == []
    mine = await share.agreements.ListAgreements(
        pb.ListAgreementsRequest(role=pb.AGREEMENT_ROLE_OWNER), metadata=share.owner
    )
    assert [a.name for a in mine.agreements] == [agreement.name]


async def test_a_request_is_checked_against_the_dataset_and_is_idempotent(share):
    bad = pb.Terms(
        columns=["site", "nope"], areas=["atlantis"], expire_time=stamp(share.clock.now() - timedelta(days=1))
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await share.request("parking_occupancy", bad)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {
        "agreement.requested_terms.columns",
        "agreement.requested_terms.areas[0]",
        "agreement.requested_terms.expire_time",
    } <= set(field_violations(refused.value))
    # personal columns need an aggregation floor
    with pytest.raises(grpc.aio.AioRpcError) as floorless:
        await share.request("parking_events", share.terms(["site", "plate_pseudonym"]))
    assert "agreement.requested_terms.min_group_size" in field_violations(floorless.value)
    request = pb.RequestAgreementRequest(
        agreement=pb.Agreement(
            dataset="datasets/parking_occupancy",
            purpose="noise mapping study",
            requested_terms=share.terms(["site"]),
        ),
        request_id="req-1",
    )
    first = await share.agreements.RequestAgreement(request, metadata=share.consumer)
    again = await share.agreements.RequestAgreement(request, metadata=share.consumer)
    assert first.name == again.name
