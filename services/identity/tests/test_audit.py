"""IDN-6: auditors read the audit trail (the access log among it) and nothing else; nobody else reads it.
The trail imports every service's hash-chained access log and notices when one was altered."""

from __future__ import annotations

import json

import grpc
import pytest

from cityos.identity.v1 import identity_pb2
from cityos_identity.policies import policy_table
from cityos_platform.auth import Principal
from cityos_platform.authz import authorize
from cityos_platform.errors import PermissionDenied

AUDIT_READ = "/cityos.identity.v1.AuditService/ListAuditRecords"
AUDITOR = Principal(subject="users/ada", organization="city-office", roles=frozenset({"auditor"}))


@pytest.mark.req("IDN-6")
@pytest.mark.parametrize("method", sorted(policy_table()))
def test_an_auditor_reaches_the_audit_trail_and_no_other_method(method):
    """Generated from the policy table of every CityOS API (a new RPC is checked by itself)."""
    policy = policy_table()[method]
    if method == AUDIT_READ:
        authorize(policy, AUDITOR)
    elif not policy.public:
        with pytest.raises(PermissionDenied):
            authorize(policy, AUDITOR)


@pytest.mark.req("IDN-6")
@pytest.mark.parametrize(
    "roles",
    [{"city-admin"}, {"org-admin"}, {"operator"}, {"analyst"}, {"developer"}, {"service"}, {"citizen"}],
)
def test_no_role_but_auditor_reads_the_audit_trail(roles):
    with pytest.raises(PermissionDenied):
        authorize(
            policy_table()[AUDIT_READ], Principal(subject="users/x", organization="o", roles=frozenset(roles))
        )


@pytest.mark.req("IDN-6")
async def test_the_trail_holds_every_call_from_the_access_logs_for_auditors_only(city):
    await city.organization("transport")
    await city.organizations.GetOrganization(
        identity_pb2.GetOrganizationRequest(name="organizations/transport"),
        metadata=city.token("users/t", "transport", "operator"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as admin:
        await city.audit.ListAuditRecords(identity_pb2.ListAuditRecordsRequest(), metadata=city.admin)
    assert admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await city.server.runtime.access_records.flush()
    assert await city.app.importer.import_all() >= 3
    calls = await city.audit.ListAuditRecords(
        identity_pb2.ListAuditRecordsRequest(kind=identity_pb2.AUDIT_KIND_CALL), metadata=city.auditor
    )
    seen = [(r.subject, r.action, r.outcome) for r in calls.records]
    assert ("users/t", "/cityos.identity.v1.OrganizationService/GetOrganization", "OK") in seen
    assert ("root", "/cityos.identity.v1.AuditService/ListAuditRecords", "PERMISSION_DENIED") in seen
    # Resumes where it stopped: nothing twice.
    assert await city.app.importer.import_all() == 0


@pytest.mark.req("IDN-6")
async def test_an_altered_access_log_is_detected_and_recorded(city, tmp_path):
    await city.organization("transport")
    await city.server.runtime.access_records.flush()
    await city.app.importer.import_all()
    log = next((tmp_path / "audit").glob("access-*.jsonl"))
    # Someone edits an old line and appends more calls.
    lines = log.read_text().splitlines()
    record = json.loads(lines[0])
    record["subject"] = "someone-else"
    lines[0] = json.dumps(record)
    await city.organizations.ListOrganizations(identity_pb2.ListOrganizationsRequest(), metadata=city.admin)
    await city.server.runtime.access_records.flush()
    log.write_text("\n".join(lines + log.read_text().splitlines()[len(lines) :]) + "\n")
    city.app.importer.broken.clear()
    async with city.app.db.transaction() as tx:  # make the importer read the file from its start
        from cityos_identity.models import AccessLogOffset

        await tx.session.delete(await tx.session.get(AccessLogOffset, log.name))
    await city.app.importer.import_all()
    trail = await city.audit.ListAuditRecords(identity_pb2.ListAuditRecordsRequest(), metadata=city.auditor)
    broken = [r for r in trail.records if r.action == "access_log.chain_broken"]
    assert [(r.outcome, r.resource) for r in broken] == [("TAMPERED", log.name)]
