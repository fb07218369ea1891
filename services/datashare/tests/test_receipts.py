"""The receipt chain: every access leaves a signed, hash-linked receipt, and any change to the chain — an
altered, removed, reordered or forged receipt — is found by verification (DSH-3). Against SQLite and
PostgreSQL; concurrent appends (also from two processes' worth of connections) never fork it."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import stat
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr
from sqlalchemy import select, text

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_datashare.models import Base, ReceiptRow
from cityos_datashare.receipts import (
    GENESIS,
    SIGNING_KEY_VARIABLE,
    AccessRecord,
    ReceiptLog,
    ReceiptServicer,
    ReceiptSigner,
    chain_hash,
    hashed_fields,
    query_hash,
)
from cityos_datashare.settings import DatashareSettings, receipt_key_path
from cityos_platform.config import ConfigError
from cityos_platform.db import Database
from cityos_platform.migrate import PLATFORM_CHAIN, service_chain, upgrade
from cityos_platform.paging import PageTokens
from cityos_platform.server import Mount
from cityos_platform.testing.fixtures import bearer
from cityos_platform.testing.status import field_violations, refused

CHAIN = service_chain("cityos_datashare", Base.metadata)
# Small pages, so that verification crosses page boundaries in every test.
PAGE_ROWS = 4


def access(
    n: int = 0,
    *,
    owner: str = "org-a",
    consumer: str = "org-b",
    dataset: str = "parking_events",
    agreement: str = "0190a1b2c3d4e5f60718293a4b5c6d01",
    kind: int = pb.ACCESS_KIND_QUERY,
) -> AccessRecord:
    return AccessRecord(
        subject=f"users/{consumer}-reader",
        consumer_organization=consumer,
        owner_organization=owner,
        dataset_id=dataset,
        agreement_id=agreement,
        purpose="traffic planning",
        columns=("zone_id", "occupied"),
        row_count=100 + n,
        query_hash=query_hash(f"query {n}"),
        kind=kind,
        completed=True,
    )


def new_signer() -> ReceiptSigner:
    return ReceiptSigner(Ed25519PrivateKey.generate())


def private_pem(key: Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    await upgrade(database_url, [PLATFORM_CHAIN, CHAIN])
    database = Database(database_url, source="datashare")
    yield database
    await database.close()


@pytest.fixture
def signer() -> ReceiptSigner:
    return new_signer()


@pytest.fixture
def receipts(db: Database, signer: ReceiptSigner) -> ReceiptLog:
    return ReceiptLog(db, signer, verify_page_rows=PAGE_ROWS)


async def fill(receipts: ReceiptLog, count: int) -> list[ReceiptRow]:
    return [await receipts.append(access(n)) for n in range(count)]


async def execute(db: Database, statement: str, **parameters: Any) -> None:
    async with db.transaction() as tx:
        await tx.session.execute(text(statement), parameters)


async def stored(db: Database) -> list[ReceiptRow]:
    async with db.read() as session:
        return list(await session.scalars(select(ReceiptRow).order_by(ReceiptRow.sequence)))


async def rewrite(db: Database, sequence: int, **values: Any) -> None:
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    await execute(
        db, f"UPDATE receipts SET {assignments} WHERE sequence = :sequence", sequence=sequence, **values
    )


# -- the chain -----------------------------------------------------------------------------------------------


async def test_appends_form_a_signed_chain_that_verifies(receipts, db, signer):
    appended = await fill(receipts, 11)
    rows = await stored(db)
    assert [row.sequence for row in rows] == list(range(1, 12))
    assert rows[0].previous_hash == GENESIS
    for before, row in itertools.pairwise(rows):
        assert row.previous_hash == before.hash
    for row in rows:
        assert row.hash == chain_hash(row.previous_hash, hashed_fields(row))
        assert row.key_id == signer.key_id
        assert signer.verify(row.key_id, row.hash, row.signature)
    # What append returned is what was committed.
    assert [(row.sequence, row.hash) for row in appended] == [(row.sequence, row.hash) for row in rows]
    assert rows[3].row_count == 103
    assert rows[3].columns == ["zone_id", "occupied"]

    result = await receipts.verify()
    assert (result.valid, result.checked, result.first_bad_sequence, result.problem) == (True, 11, 0, "")
    assert result.head_hash == rows[-1].hash


async def test_an_empty_chain_is_valid(receipts):
    result = await receipts.verify()
    assert (result.valid, result.checked, result.head_hash) == (True, 0, "")


async def test_the_hash_covers_the_fields_but_not_the_signature(receipts, db):
    row = (await fill(receipts, 1))[0]
    fields = hashed_fields(row)
    assert set(fields) == {
        "sequence",
        "time",
        "subject",
        "consumer_organization",
        "owner_organization",
        "dataset_id",
        "agreement_id",
        "purpose",
        "columns",
        "row_count",
        "query_hash",
        "kind",
        "completed",
        "previous_hash",
    }
    assert fields["time"].endswith("Z")
    assert len(fields["time"]) == len("2026-01-01T00:00:00.000000Z")
    body = (
        '{"agreement_id":"0190a1b2c3d4e5f60718293a4b5c6d01","columns":["zone_id","occupied"],'
        f'"completed":true,"consumer_organization":"org-b","dataset_id":"parking_events","kind":1,'
        f'"owner_organization":"org-a","previous_hash":"{GENESIS}","purpose":"traffic planning",'
        f'"query_hash":"{query_hash("query 0")}","row_count":100,"sequence":1,"subject":"users/org-b-reader",'
        f'"time":"{fields["time"]}"}}'
    )
    assert row.hash == hashlib.sha256((GENESIS + body).encode()).hexdigest()


async def test_concurrent_appends_neither_fork_nor_leave_gaps(database_url, db, signer):
    # Two logs on two engines stand for two replicas: the in-process lock does not cover them both, the
    # database's lock must.
    other = Database(database_url, source="datashare")
    try:
        logs = [ReceiptLog(db, signer, verify_page_rows=PAGE_ROWS), ReceiptLog(other, signer)]
        appended = await asyncio.gather(*(logs[n % 2].append(access(n)) for n in range(20)))
    finally:
        await other.close()
    assert sorted(row.sequence for row in appended) == list(range(1, 21))
    rows = await stored(db)
    assert len({row.previous_hash for row in rows}) == 20  # no two receipts claim the same predecessor
    result = await logs[0].verify()
    assert (result.valid, result.checked) == (True, 20), result.problem


# -- tampering (DSH-3) ---------------------------------------------------------------------------------------


@pytest.mark.req("DSH-3")
@pytest.mark.parametrize("sequence", [1, 5, 10])
async def test_an_altered_row_count_is_found_at_its_receipt(receipts, db, sequence):
    await fill(receipts, 10)
    await execute(db, "UPDATE receipts SET row_count = row_count + 1000 WHERE sequence = :s", s=sequence)
    result = await receipts.verify()
    assert not result.valid
    assert result.first_bad_sequence == sequence
    assert result.checked == sequence - 1
    assert "was changed" in result.problem
    assert "\n" not in result.problem


@pytest.mark.req("DSH-3")
async def test_a_deleted_receipt_is_found(receipts, db):
    await fill(receipts, 10)
    await execute(db, "DELETE FROM receipts WHERE sequence = 6")
    result = await receipts.verify()
    assert (result.valid, result.first_bad_sequence) == (False, 6)
    assert "receipt 6 is missing" in result.problem


@pytest.mark.req("DSH-3")
async def test_a_deleted_receipt_renumbered_over_is_found(receipts, db):
    """Closing the gap by renumbering the later receipts does not hide the removal."""
    await fill(receipts, 6)
    await execute(db, "DELETE FROM receipts WHERE sequence = 3")
    for sequence in (4, 5, 6):
        await execute(
            db, "UPDATE receipts SET sequence = :new WHERE sequence = :old", new=sequence - 1, old=sequence
        )
    result = await receipts.verify()
    assert (result.valid, result.first_bad_sequence) == (False, 3)
    assert "does not link" in result.problem


@pytest.mark.req("DSH-3")
async def test_swapped_receipts_are_found(receipts, db):
    await fill(receipts, 8)
    rows = {row.sequence: row for row in await stored(db)}
    columns = [c for c in ReceiptRow.__table__.columns.keys() if c not in ("sequence", "columns")]  # noqa: SIM118
    for here, there in ((4, 5), (5, 4)):
        await rewrite(db, here, **{c: getattr(rows[there], c) for c in columns})
    result = await receipts.verify()
    assert (result.valid, result.first_bad_sequence) == (False, 4)
    assert "removed or reordered" in result.problem


@pytest.mark.req("DSH-3")
@pytest.mark.parametrize("claimed_key", ["forger's", "service's"])
async def test_a_forged_receipt_signed_with_another_key_is_found(receipts, db, signer, claimed_key):
    await fill(receipts, 8)
    forged = (await stored(db))[4]
    forged.row_count = 1
    digest = chain_hash(forged.previous_hash, hashed_fields(forged))
    forger = new_signer()
    key_id = forger.key_id if claimed_key == "forger's" else signer.key_id
    await rewrite(db, 5, row_count=1, hash=digest, signature=forger.sign(digest), key_id=key_id)
    result = await receipts.verify()
    assert (result.valid, result.first_bad_sequence) == (False, 5)
    expected = "unknown key" if claimed_key == "forger's" else "bad signature"
    assert expected in result.problem


@pytest.mark.req("DSH-3")
async def test_a_recomputed_hash_without_a_valid_signature_is_found(receipts, db):
    await fill(receipts, 8)
    forged = (await stored(db))[4]
    forged.row_count = 1
    await rewrite(db, 5, row_count=1, hash=chain_hash(forged.previous_hash, hashed_fields(forged)))
    result = await receipts.verify()
    assert (result.valid, result.first_bad_sequence) == (False, 5)
    assert "bad signature" in result.problem


# -- keys ----------------------------------------------------------------------------------------------------


def test_the_embedded_key_is_created_once_and_reused(tmp_path):
    first = ReceiptSigner.from_settings(DatashareSettings(), tmp_path, production=False)
    path = receipt_key_path(tmp_path)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ReceiptSigner.from_settings(DatashareSettings(), tmp_path, production=False)
    assert again.key_id == first.key_id
    assert again.verify(first.key_id, "ab" * 32, first.sign("ab" * 32))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no scratch file left behind


def test_production_needs_a_signing_key(tmp_path):
    with pytest.raises(ConfigError, match=SIGNING_KEY_VARIABLE):
        ReceiptSigner.from_settings(DatashareSettings(), tmp_path, production=True)
    assert not receipt_key_path(tmp_path).exists()


def test_a_configured_key_signs_and_a_wrong_one_is_a_config_error(tmp_path):
    key = Ed25519PrivateKey.generate()
    settings = DatashareSettings(receipt_signing_key=SecretStr(private_pem(key)))
    signer = ReceiptSigner.from_settings(settings, tmp_path, production=True)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signer.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert not receipt_key_path(tmp_path).exists()
    # A PEM in a one-line variable (`\n` for its line breaks) is read too.
    escaped = DatashareSettings(receipt_signing_key=SecretStr(private_pem(key).replace("\n", "\\n")))
    assert ReceiptSigner.from_settings(escaped, tmp_path, production=True).key_id == signer.key_id
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ConfigError, match=f"{SIGNING_KEY_VARIABLE}.*Ed25519"):
        ReceiptSigner.from_settings(
            DatashareSettings(receipt_signing_key=SecretStr(private_pem(rsa_key))), tmp_path, production=True
        )
    with pytest.raises(ConfigError, match="PREVIOUS_PUBLIC_KEYS"):
        ReceiptSigner.from_settings(
            DatashareSettings(receipt_previous_public_keys=["not a key"]), tmp_path, production=False
        )


async def test_receipts_signed_before_a_key_rotation_still_verify(db, tmp_path):
    old_key, new_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    old = ReceiptSigner.from_settings(
        DatashareSettings(receipt_signing_key=SecretStr(private_pem(old_key))), tmp_path, production=True
    )
    await fill(ReceiptLog(db, old), 3)
    rotated = ReceiptSigner.from_settings(
        DatashareSettings(
            receipt_signing_key=SecretStr(private_pem(new_key)),
            receipt_previous_public_keys=[old.public_keys()[old.key_id]],
        ),
        tmp_path,
        production=True,
    )
    log = ReceiptLog(db, rotated, verify_page_rows=PAGE_ROWS)
    await fill(log, 3)
    assert [row.key_id for row in await stored(db)] == [old.key_id] * 3 + [rotated.key_id] * 3
    assert set(rotated.public_keys()) == {old.key_id, rotated.key_id}
    result = await log.verify()
    assert (result.valid, result.checked) == (True, 6), result.problem
    # Without the earlier key the old receipts no longer verify.
    forgetful = ReceiptSigner.from_settings(
        DatashareSettings(receipt_signing_key=SecretStr(private_pem(new_key))), tmp_path, production=True
    )
    result = await ReceiptLog(db, forgetful).verify()
    assert (result.valid, result.first_bad_sequence) == (False, 1)
    assert "unknown key" in result.problem


def test_query_hash_is_the_sha256_of_the_deterministic_serialization():
    request = pb.ListReceiptsRequest(dataset="datasets/parking_events", page_size=3)
    digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    assert query_hash(request) == digest
    assert query_hash(request.SerializeToString(deterministic=True)) == digest
    assert query_hash("GET /ngsi-ld/v1/entities") == hashlib.sha256(b"GET /ngsi-ld/v1/entities").hexdigest()
    assert query_hash(pb.ListReceiptsRequest(page_size=4)) != digest


# -- the API -------------------------------------------------------------------------------------------------


@pytest.fixture
async def api(start_server, receipts) -> AsyncIterator[datashare_pb2_grpc.ReceiptServiceStub]:
    servicer = ReceiptServicer(receipts, PageTokens(b"receipt-test-page-token-secret-0"))
    server = await start_server(
        [
            Mount(
                descriptor=pb.DESCRIPTOR.services_by_name["ReceiptService"],
                servicer=servicer,
                add_to_server=datashare_pb2_grpc.add_ReceiptServiceServicer_to_server,
            )
        ]
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield datashare_pb2_grpc.ReceiptServiceStub(channel)


async def seed(receipts: ReceiptLog) -> dict[str, list[int]]:
    """Receipts among organizations A, B, C and D; the sequences each organization should see."""
    plan = [
        access(owner="org-a", consumer="org-b"),  # 1: A's data, read by B
        access(owner="org-c", consumer="org-b", dataset="waste_levels"),  # 2
        access(owner="org-d", consumer="org-a", dataset="air_quality"),  # 3: A reads D's data
        access(owner="org-c", consumer="org-c", dataset="waste_levels", agreement=""),  # 4
        access(owner="org-a", consumer="", agreement="", kind=pb.ACCESS_KIND_OPEN_DATA),  # 5
        access(owner="org-c", consumer="org-d", dataset="waste_levels"),  # 6
        access(owner="org-a", consumer="org-b", agreement="0190a1b2c3d4e5f60718293a4b5c6d02"),  # 7
    ]
    for record in plan:
        await receipts.append(record)
    return {"org-a": [7, 5, 3, 1], "org-b": [7, 2, 1], "org-c": [6, 4, 2], "all": [7, 6, 5, 4, 3, 2, 1]}


async def listed(api, metadata, **request: Any) -> list[int]:
    response = await api.ListReceipts(pb.ListReceiptsRequest(**request), metadata=metadata)
    return [receipt.sequence for receipt in response.receipts]


async def test_list_receipts_shows_an_organization_its_data_and_its_reads(api, receipts, mint):
    expected = await seed(receipts)
    for organization in ("org-a", "org-b", "org-c"):
        who = bearer(mint(f"users/{organization}-admin", organization, ["org-admin"]))
        assert await listed(api, who) == expected[organization], organization
    auditor = bearer(mint("users/inspector", "city-office", ["city-admin"]))
    assert await listed(api, auditor) == expected["all"]
    service = bearer(mint("services/analytics", "city", ["service"]))
    assert await listed(api, service) == expected["all"]

    response = await api.ListReceipts(pb.ListReceiptsRequest(page_size=1), metadata=auditor)
    receipt = response.receipts[0]
    assert receipt.name == "receipts/7"
    assert receipt.dataset == "datasets/parking_events"
    assert receipt.agreement == "agreements/0190a1b2c3d4e5f60718293a4b5c6d02"
    assert receipt.kind == pb.ACCESS_KIND_QUERY
    assert receipt.completed
    assert receipt.row_count == 100
    assert list(receipt.columns) == ["zone_id", "occupied"]
    assert len(receipt.hash) == 64
    assert receipt.signature
    assert receipt.key_id == receipts.signer.key_id
    open_read = (await api.ListReceipts(pb.ListReceiptsRequest(page_size=3), metadata=auditor)).receipts[2]
    assert (open_read.sequence, open_read.agreement, open_read.kind) == (5, "", pb.ACCESS_KIND_OPEN_DATA)


async def test_list_receipts_filters_by_dataset_and_agreement(api, receipts, mint):
    await seed(receipts)
    a = bearer(mint("users/a", "org-a", ["org-admin"]))
    auditor = bearer(mint("users/inspector", "city-office", ["city-admin"]))
    assert await listed(api, auditor, dataset="datasets/waste_levels") == [6, 4, 2]
    assert await listed(api, a, dataset="datasets/waste_levels") == []  # C's data, not A's business
    assert await listed(api, a, dataset="datasets/parking_events") == [7, 5, 1]
    only = "agreements/0190a1b2c3d4e5f60718293a4b5c6d02"
    assert await listed(api, a, agreement=only) == [7]
    assert await listed(api, a, dataset="datasets/air_quality", agreement=only) == []


async def test_list_receipts_pages_newest_first(api, receipts, mint):
    for n in range(7):
        await receipts.append(access(n))
    auditor = bearer(mint("users/inspector", "city-office", ["city-admin"]))
    seen, token, pages = [], "", 0
    while True:
        response = await api.ListReceipts(
            pb.ListReceiptsRequest(page_size=3, page_token=token), metadata=auditor
        )
        seen += [receipt.sequence for receipt in response.receipts]
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert (seen, pages) == ([7, 6, 5, 4, 3, 2, 1], 3)
    # The token belongs to its query and its caller.
    first = await api.ListReceipts(pb.ListReceiptsRequest(page_size=3), metadata=auditor)
    other_query = pb.ListReceiptsRequest(page_size=3, page_token=first.next_page_token, dataset="datasets/x")
    error = await refused(api.ListReceipts(other_query, metadata=auditor))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(error)] == ["page_token"]
    # 0 means 50.
    for n in range(50):
        await receipts.append(access(n))
    response = await api.ListReceipts(pb.ListReceiptsRequest(), metadata=auditor)
    assert len(response.receipts) == 50
    assert response.next_page_token


async def test_list_receipts_refuses_malformed_filters(api, mint):
    auditor = bearer(mint("users/inspector", "city-office", ["city-admin"]))
    request = pb.ListReceiptsRequest(dataset="parking_events", agreement="agreements/", page_size=-1)
    error = await refused(api.ListReceipts(request, metadata=auditor))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field for field, _ in field_violations(error)) == ["agreement", "dataset", "page_size"]
    error = await refused(api.ListReceipts(pb.ListReceiptsRequest(dataset="datasets/a b"), metadata=auditor))
    assert [field for field, _ in field_violations(error)] == ["dataset"]


async def test_list_receipts_needs_a_receipt_reading_role(api, mint):
    analyst = bearer(mint("users/x", "org-a", ["analyst"]))
    error = await refused(api.ListReceipts(pb.ListReceiptsRequest(), metadata=analyst))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.req("DSH-3")
async def test_verify_receipts_over_grpc_finds_tampering(api, receipts, db, mint):
    await fill(receipts, 9)
    auditor = bearer(mint("users/inspector", "city-office", ["city-admin"]))
    response = await api.VerifyReceipts(pb.VerifyReceiptsRequest(), metadata=auditor)
    head = (await stored(db))[-1]
    assert (response.valid, response.checked, response.first_bad_sequence, response.problem) == (
        True,
        9,
        0,
        "",
    )
    assert response.head_hash == head.hash
    assert dict(response.public_keys) == receipts.signer.public_keys()
    assert response.public_keys[receipts.signer.key_id].startswith("-----BEGIN PUBLIC KEY-----")

    await execute(db, "UPDATE receipts SET purpose = 'something else' WHERE sequence = 7")
    response = await api.VerifyReceipts(pb.VerifyReceiptsRequest(), metadata=auditor)
    assert (response.valid, response.checked, response.first_bad_sequence) == (False, 6, 7)
    assert "receipt 7 was changed" in response.problem
    assert response.head_hash == head.hash
