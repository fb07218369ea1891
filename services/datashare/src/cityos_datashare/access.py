"""Reads under an agreement: `AccessService.Query` (Arrow IPC batches) and `Export` (an extract in the
lake behind a short-lived URL).

Who may read: the agreement's consumer organization, while the agreement is in force. Another
organization's agreement does not exist for the caller (NOT_FOUND); the owner reads its own data through
its services, not through an agreement (PERMISSION_DENIED). An agreement not (or no longer) in force is
FAILED_PRECONDITION, AGREEMENT_NOT_IN_FORCE — also in the middle of a stream, where it is re-read before
every batch (`engine`). What is read is shaped by `enforce.plan`.

Every read under an agreement appends a receipt (`receipts`): the columns returned, the rows (or
groups), a hash of the request and whether it ran to its end; a read stopped by a revocation is recorded
with `completed=false`.

Exports. The extract is written as one Parquet file to a local temporary file batch by batch (the grant
re-checked between batches), then put in the lake under `_datashare/exports/<agreement>/<export>.parquet`
(a hidden folder the table readers skip) and recorded. The URL: on MinIO/S3 a presigned GET (the minio
SDK) valid for `url_ttl_seconds`; on a local-folder lake (the embedded city) a link to this service's
HTTP listener signed with HMAC-SHA256 over (export, expiry), which it checks together with the expiry and
the agreement. Revocation and expiry delete the agreement's extracts (`Exports.delete_for`), so an issued
URL stops working: on S3 the object is gone (a presigned URL of a missing object answers 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from sqlalchemy import select

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_datashare import engine
from cityos_datashare.agreements import parse_agreement_name
from cityos_datashare.catalog import classification_of, dataset_name
from cityos_datashare.enforce import Plan, ReadSpec, plan
from cityos_datashare.grants import grant_of, in_force
from cityos_datashare.models import AgreementRow, DatasetRow, ExportRow
from cityos_datashare.receipts import AccessRecord, ReceiptLog, query_hash, receipt_proto
from cityos_datashare.settings import DatashareSettings
from cityos_platform.areas import AreaRegistry
from cityos_platform.auth import Principal
from cityos_platform.db import Database
from cityos_platform.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from cityos_platform.interceptor import current_call
from cityos_platform.lake import Lake
from cityos_platform.tenancy import not_found

log = logging.getLogger(__name__)

EXPORTS_FOLDER = "_datashare/exports"
MAX_URL_TTL_S = 3600


class Exports:
    """The extracts in the lake and their download links."""

    def __init__(self, db: Database, lake: Lake, secret: bytes, base_url: str = "") -> None:
        self.db = db
        self.lake = lake
        self.secret = secret
        self.base_url = base_url  # the HTTP listener's URL (set once it listens)

    def path(self, agreement_id: str, export_id: str) -> str:
        return self.lake.path(EXPORTS_FOLDER, agreement_id, f"{export_id}.parquet")

    def signature(self, export_id: str, expires: int) -> str:
        return hmac.new(self.secret, f"{export_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, export_id: str, path: str, ttl: timedelta) -> str:
        if self.lake.is_s3:
            return self.lake.presigned_get(path, ttl)
        expires = int(self.db.clock.now().timestamp() + ttl.total_seconds())
        signature = self.signature(export_id, expires)
        return f"{self.base_url}/exports/{export_id}?expires={expires}&signature={signature}"

    async def delete_for(self, agreement_id: str) -> int:
        """Delete every extract of the agreement (lake files first, then the records)."""
        async with self.db.read() as session:
            rows = list(
                await session.scalars(
                    select(ExportRow).where(
                        ExportRow.agreement_id == agreement_id, ExportRow.deleted.is_(False)
                    )
                )
            )
        for row in rows:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(self.lake.delete, row.path)
        if rows:
            async with self.db.transaction() as tx:
                for row in rows:
                    stored = await tx.session.get(ExportRow, row.export_id)
                    if stored is not None:
                        stored.deleted = True
            log.info("deleted %d extract(s) of agreements/%s", len(rows), agreement_id)
        return len(rows)

    # -- the embedded download route --------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/exports/{export_id}", self.download)]

    async def download(self, request: web.Request) -> web.StreamResponse:
        export_id = request.match_info["export_id"]
        try:
            expires = int(request.query.get("expires", ""))
        except ValueError:
            raise web.HTTPBadRequest(text="expires must be a Unix time") from None
        given = request.query.get("signature", "")
        if not hmac.compare_digest(given, self.signature(export_id, expires)):
            raise web.HTTPForbidden(text="the signature does not match")
        if self.db.clock.now().timestamp() >= expires:
            raise web.HTTPForbidden(text="the link has expired")
        async with self.db.read() as session:
            row = await session.get(ExportRow, export_id) if len(export_id) <= 36 else None
            agreement = await session.get(AgreementRow, row.agreement_id) if row is not None else None
        if row is None or row.deleted or not in_force(agreement, self.db.clock.now()):
            raise web.HTTPNotFound(text="no such extract (deleted with its agreement, or never made)")
        try:
            data = await asyncio.to_thread(self.lake.read_bytes, row.path)
        except FileNotFoundError:
            raise web.HTTPNotFound(text="no such extract") from None
        return web.Response(
            body=data,
            content_type="application/vnd.apache.parquet",
            headers={"Content-Disposition": f'attachment; filename="{export_id}.parquet"'},
        )


class AccessServicer(datashare_pb2_grpc.AccessServiceServicer):
    def __init__(
        self,
        db: Database,
        lake: Lake,
        areas: AreaRegistry,
        receipts: ReceiptLog,
        exports: Exports,
        settings: DatashareSettings,
    ) -> None:
        self.db = db
        self.lake = lake
        self.areas = areas
        self.receipts = receipts
        self.exports = exports
        self.settings = settings

    async def _agreement(self, name: str, field: str, caller: Principal) -> tuple[AgreementRow, DatasetRow]:
        agreement_id = parse_agreement_name(name, field)
        async with self.db.read() as session:
            row = await session.get(AgreementRow, agreement_id)
            if row is None or caller.organization not in (row.consumer_organization, row.owner_organization):
                raise not_found("agreement", name)
            if caller.organization != row.consumer_organization:
                raise PermissionDenied(
                    "only the consumer organization reads under an agreement", reason="NOT_CONSUMER"
                )
            dataset = await session.get(DatasetRow, row.dataset_id)
        if not in_force(row, self.db.clock.now()):
            raise engine.NotInForce(name)
        if dataset is None or dataset.kind != pb.DATASET_KIND_LAKE_TABLE:
            raise FailedPrecondition(
                f"{dataset_name(row.dataset_id)} is not a lake table (live views are read over NGSI-LD)",
                reason="NOT_A_LAKE_TABLE",
            )
        return row, dataset

    def _still_granted(self, agreement_id: str) -> engine.StillGranted:
        async def check() -> bool:
            async with self.db.read() as session:
                row = await session.get(AgreementRow, agreement_id)
            return in_force(row, self.db.clock.now())

        return check

    async def _record(
        self,
        caller: Principal,
        row: AgreementRow,
        columns: tuple[str, ...],
        outcome: engine.Outcome,
        digest: str,
        kind: int,
    ) -> pb.Receipt:
        stored = await self.receipts.append(
            AccessRecord(
                subject=caller.subject,
                consumer_organization=row.consumer_organization,
                owner_organization=row.owner_organization,
                dataset_id=row.dataset_id,
                agreement_id=row.agreement_id,
                purpose=row.purpose,
                columns=columns,
                row_count=outcome.rows,
                query_hash=digest,
                kind=kind,
                completed=outcome.completed,
            )
        )
        return receipt_proto(stored)

    def _plan(self, row: AgreementRow, dataset: DatasetRow, query: pb.QueryRequest, prefix: str) -> Plan:
        grant = grant_of(row, self.areas)
        read = ReadSpec.from_proto(query, prefix)
        return plan(
            dataset,
            grant.terms.columns,
            classification_of(dataset),
            read,
            min_group_size=grant.terms.min_group_size,
            grant=grant,
            max_rows=self.settings.max_rows,
        )

    async def Query(
        self, request: pb.QueryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.QueryResponse]:
        caller = current_call().principal
        row, dataset = await self._agreement(request.agreement, "agreement", caller)
        checked = self._plan(row, dataset, request, "")
        outcome = engine.Outcome()
        digest = query_hash(request)
        try:
            async for batch in engine.run(
                checked,
                self.lake,
                batch_rows=self.settings.batch_rows,
                still_granted=self._still_granted(row.agreement_id),
                agreement=request.agreement,
                outcome=outcome,
            ):
                yield pb.QueryResponse(arrow_ipc=engine.ipc_bytes(batch), row_count=batch.num_rows)
        finally:
            # Recorded however the read ends: run to its end, stopped by a revocation, or cancelled.
            receipt = await asyncio.shield(
                self._record(caller, row, checked.returned_columns, outcome, digest, pb.ACCESS_KIND_QUERY)
            )
        yield pb.QueryResponse(receipt=receipt, suppressed_groups=outcome.suppressed_groups)

    async def Export(self, request: pb.ExportRequest, context: grpc.aio.ServicerContext) -> pb.ExportResponse:
        if not 0 <= request.url_ttl_seconds <= MAX_URL_TTL_S:
            raise InvalidArgument.field(
                "url_ttl_seconds", f"0 (means {self.settings.export_url_ttl_s}) to 3600"
            )
        ttl = timedelta(seconds=request.url_ttl_seconds or self.settings.export_url_ttl_s)
        caller = current_call().principal
        row, dataset = await self._agreement(request.query.agreement, "query.agreement", caller)
        checked = self._plan(row, dataset, request.query, "query.")
        outcome = engine.Outcome()
        export_id = uuid.uuid4().hex
        path = self.exports.path(row.agreement_id, export_id)
        still_granted = self._still_granted(row.agreement_id)
        schema = await asyncio.to_thread(engine.output_schema, checked, self.lake)
        handle, local = tempfile.mkstemp(prefix="cityos-export-", suffix=".parquet")
        os.close(handle)
        try:
            writer = pq.ParquetWriter(local, schema, compression="zstd")
            try:
                async for batch in engine.run(
                    checked,
                    self.lake,
                    batch_rows=self.settings.batch_rows,
                    still_granted=still_granted,
                    agreement=request.query.agreement,
                    outcome=outcome,
                ):
                    await asyncio.to_thread(writer.write_batch, batch)
            finally:
                writer.close()
            await asyncio.to_thread(self._upload, local, path)
            now = self.db.clock.now()
            async with self.db.transaction() as tx:
                current = await tx.session.get(AgreementRow, row.agreement_id, with_for_update=True)
                if not in_force(current, tx.now):  # revoked while the file was uploading
                    raise engine.NotInForce(request.query.agreement)
                tx.session.add(
                    ExportRow(
                        export_id=export_id,
                        agreement_id=row.agreement_id,
                        path=path,
                        row_count=outcome.rows,
                        create_time=now,
                        url_expire_time=now + ttl,
                        deleted=False,
                    )
                )
        except BaseException:
            outcome.completed = False
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(self.lake.delete, path)
            await asyncio.shield(
                self._record(
                    caller, row, checked.returned_columns, outcome, query_hash(request), pb.ACCESS_KIND_EXPORT
                )
            )
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local)
        receipt = await self._record(
            caller, row, checked.returned_columns, outcome, query_hash(request), pb.ACCESS_KIND_EXPORT
        )
        response = pb.ExportResponse(
            name=f"agreements/{row.agreement_id}/exports/{export_id}",
            url=self.exports.url(export_id, path, ttl),
            row_count=outcome.rows,
            suppressed_groups=outcome.suppressed_groups,
            receipt=receipt,
        )
        response.expire_time.FromDatetime(now + ttl)
        return response

    def _upload(self, local: str, path: str) -> None:
        folder = path.rsplit("/", 1)[0]
        if not self.lake.is_s3:
            Path(folder).mkdir(parents=True, exist_ok=True)
        self.lake.fs.put_file(local, path)


def table_of(batches: list[bytes]) -> pa.Table:
    """The batches of a Query stream as one table (for clients and tests)."""
    tables = [pa.ipc.open_stream(data).read_all() for data in batches if data]
    return pa.concat_tables(tables) if tables else pa.table({})


__all__ = ["AccessServicer", "Exports", "table_of"]
