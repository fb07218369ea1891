"""The catalog: datasets with owner, schema, per-field classification, Smart Data Models type, update
frequency and licence.

Where entries come from, without manual steps (DSH-7):

- every lake table the installation knows — the services' tables (`cityos_platform.lake.tables.REGISTRY`)
  and the analytics jobs' declared outputs (the `cityos.lake_tables` entry points) — is registered when
  the service starts (`sync_registry`), from its `TableSpec`: owner, columns with their types, documents
  and classification, time and area columns, schema version;
- the domain services' live NGSI-LD views (`cityos_datashare.live.LIVE_VIEWS`) likewise;
- writers may register more, or refresh a dataset's `data_update_time`, through `RegisterDataset` (the
  analytics runner does after each run). A registration is an upsert by id: only the owner organization
  (or a city-wide role) may change an entry, and the owner of an existing entry never changes through it.

A start re-syncs the code-declared entries (a new column, a new table after an upgrade) but keeps what the
API added: the open-data publication and the freshness.

Reading the catalog needs no token (`public` in the API): it describes data, it holds none.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from sqlalchemy import false, or_, select, true

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_datashare.live import LiveView
from cityos_datashare.models import DatasetRow
from cityos_platform.db import Database
from cityos_platform.errors import InvalidArgument, PermissionDenied
from cityos_platform.interceptor import current_call
from cityos_platform.lake.tables import TableSpec
from cityos_platform.paging import PageTokens, keyset_page, page_size
from cityos_platform.tenancy import is_city_wide, not_found

DATASET_ID = re.compile(r"^[a-z][A-Za-z0-9_.-]{0,127}$")
ID_RULE = "1 to 128 letters, digits, '_', '.' or '-', starting with a lower-case letter"
CLASSES: dict[str, int] = {
    "public": pb.CLASSIFICATION_PUBLIC,
    "internal": pb.CLASSIFICATION_INTERNAL,
    "personal": pb.CLASSIFICATION_PERSONAL,
    "sensitive": pb.CLASSIFICATION_SENSITIVE,
}
CLASS_NAMES = {value: name for name, value in CLASSES.items()}
MAX_FIELDS = 500


def dataset_name(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def parse_dataset_name(name: str, field: str = "name") -> str:
    prefix, _, dataset_id = name.partition("/")
    if prefix != "datasets" or not DATASET_ID.match(dataset_id):
        raise InvalidArgument.field(field, f"must be datasets/{{dataset}}, the id {ID_RULE}")
    return dataset_id


def classification_of(row: DatasetRow) -> dict[str, str]:
    """Field name -> `public` | `internal` | `personal` | `sensitive`."""
    return {entry["name"]: entry.get("classification", "internal") for entry in row.fields}


def _etag(values: dict[str, Any]) -> str:
    body = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(body).hexdigest()[:32]


# -- entries declared in code ------------------------------------------------------------------------------


def table_entry(spec: TableSpec) -> dict[str, Any]:
    return {
        "dataset_id": spec.name,
        "display_name": spec.name.replace("_", " ").capitalize(),
        "description": spec.description,
        "kind": pb.DATASET_KIND_LAKE_TABLE,
        "owner_organization": spec.owner,
        "source": spec.source,
        "fields": spec.catalog_fields(),
        "data_model": spec.data_model,
        "update_frequency": spec.update_frequency,
        "licence": spec.licence,
        "time_column": spec.time_column,
        "area_column": spec.area_column,
        "schema_version": spec.version,
    }


def view_entry(view: LiveView) -> dict[str, Any]:
    return {
        "dataset_id": view.dataset_id,
        "display_name": f"{view.entity_type} (live, NGSI-LD)",
        "description": view.description,
        "kind": pb.DATASET_KIND_LIVE_VIEW,
        "owner_organization": view.owner,
        "source": f"{view.service}: NgsiLdService",
        "fields": [
            {"name": name, "type": "ngsi-ld", "description": doc, "classification": cls, "nullable": True}
            for name, doc, cls in view.fields
        ],
        "data_model": view.entity_type,
        "update_frequency": "continuous",
        "licence": "internal",
        "time_column": "",
        "area_column": "location",
        "schema_version": 1,
    }


async def sync_registry(
    db: Database, tables: Iterable[TableSpec], views: Iterable[LiveView]
) -> tuple[int, int]:
    """Register (or refresh) every code-declared dataset; (added, updated)."""
    entries = [table_entry(spec) for spec in tables] + [view_entry(view) for view in views]
    added = updated = 0
    async with db.transaction() as tx:
        existing = {
            row.dataset_id: row
            for row in await tx.session.scalars(
                select(DatasetRow).where(DatasetRow.dataset_id.in_([e["dataset_id"] for e in entries]))
            )
        }
        for entry in entries:
            row = existing.get(entry["dataset_id"])
            if row is None:
                tx.session.add(
                    DatasetRow(
                        **entry,
                        open_data=None,
                        registered_by="datashare (installed registry)",
                        create_time=tx.now,
                        update_time=tx.now,
                        data_update_time=None,
                        etag=_etag(entry),
                    )
                )
                added += 1
            elif _etag({k: getattr(row, k) for k in entry}) != _etag(entry):
                for key, value in entry.items():
                    setattr(row, key, value)
                row.update_time = tx.now
                row.etag = _etag({**entry, "open_data": row.open_data, "t": tx.now})
                updated += 1
    return added, updated


# -- protobuf ----------------------------------------------------------------------------------------


def _stamp(value: datetime | None, target: Any) -> None:
    if value is not None:
        target.FromDatetime(value)


def publication_proto(data: dict[str, Any] | None) -> pb.OpenDataPublication | None:
    if not data:
        return None
    message = pb.OpenDataPublication(
        columns=data.get("columns", []),
        group_by=data.get("group_by", []),
        aggregates=[
            pb.Aggregate(function=item["function"], column=item.get("column", ""))
            for item in data.get("aggregates", [])
        ],
        min_group_size=data.get("min_group_size", 0),
        published_by=data.get("published_by", ""),
    )
    if data.get("publish_time"):
        message.publish_time.FromDatetime(datetime.fromisoformat(data["publish_time"]))
    return message


def dataset_proto(row: DatasetRow) -> pb.Dataset:
    message = pb.Dataset(
        name=dataset_name(row.dataset_id),
        dataset_id=row.dataset_id,
        display_name=row.display_name,
        description=row.description,
        kind=row.kind,  # type: ignore[arg-type]
        owner_organization=row.owner_organization,
        source=row.source,
        fields=[
            pb.DatasetField(
                name=entry["name"],
                type=entry.get("type", ""),
                description=entry.get("description", ""),
                classification=CLASSES.get(entry.get("classification", "internal"), 0),  # type: ignore[arg-type]
                nullable=bool(entry.get("nullable", True)),
            )
            for entry in row.fields
        ],
        data_model=row.data_model,
        update_frequency=row.update_frequency,
        licence=row.licence,
        time_column=row.time_column,
        area_column=row.area_column,
        schema_version=row.schema_version,
        etag=row.etag,
    )
    publication = publication_proto(row.open_data)
    if publication is not None:
        message.open_data.CopyFrom(publication)
    _stamp(row.create_time, message.create_time)
    _stamp(row.update_time, message.update_time)
    _stamp(row.data_update_time, message.data_update_time)
    return message


# -- the RPCs ----------------------------------------------------------------------------------------


def _check_registration(dataset: pb.Dataset) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if not DATASET_ID.match(dataset.dataset_id):
        problems.append(("dataset.dataset_id", ID_RULE))
    if not dataset.display_name.strip() or len(dataset.display_name) > 200:
        problems.append(("dataset.display_name", "required, at most 200 characters"))
    if len(dataset.description) > 10_000:
        problems.append(("dataset.description", "at most 10000 characters"))
    if dataset.kind not in (pb.DATASET_KIND_LAKE_TABLE, pb.DATASET_KIND_LIVE_VIEW):
        problems.append(("dataset.kind", "LAKE_TABLE or LIVE_VIEW"))
    if not dataset.fields or len(dataset.fields) > MAX_FIELDS:
        problems.append(("dataset.fields", f"1 to {MAX_FIELDS} fields"))
    names = [f.name for f in dataset.fields]
    if len(set(names)) != len(names):
        problems.append(("dataset.fields", "a field name appears twice"))
    for index, f in enumerate(dataset.fields):
        if not re.match(r"^[A-Za-z_@][A-Za-z0-9_.-]{0,127}$", f.name):
            problems.append((f"dataset.fields[{index}].name", "a column or attribute name"))
        if f.classification not in CLASS_NAMES:
            problems.append(
                (f"dataset.fields[{index}].classification", "PUBLIC, INTERNAL, PERSONAL or SENSITIVE")
            )
    for column_field in ("time_column", "area_column"):
        value = getattr(dataset, column_field)
        if value and value not in names and not (column_field == "area_column" and value == "location"):
            problems.append((f"dataset.{column_field}", "must be one of the fields"))
    for text_field, limit in (
        ("source", 300),
        ("data_model", 100),
        ("update_frequency", 50),
        ("licence", 50),
    ):
        if len(getattr(dataset, text_field)) > limit:
            problems.append((f"dataset.{text_field}", f"at most {limit} characters"))
    return problems


class CatalogServicer(datashare_pb2_grpc.CatalogServiceServicer):
    def __init__(self, db: Database, page_tokens: PageTokens) -> None:
        self.db = db
        self.page_tokens = page_tokens

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> pb.Dataset:
        dataset_id = parse_dataset_name(request.name)
        async with self.db.read() as session:
            row = await session.get(DatasetRow, dataset_id)
        if row is None:
            raise not_found("dataset", request.name)
        return dataset_proto(row)

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDatasetsResponse:
        problems = []
        if request.page_size < 0:
            problems.append(("page_size", "must not be negative"))
        if len(request.query) > 200:
            problems.append(("query", "at most 200 characters"))
        if problems:
            raise InvalidArgument.many(problems)
        statement = select(DatasetRow)
        if request.owner_organization:
            statement = statement.where(DatasetRow.owner_organization == request.owner_organization)
        if request.kind:
            statement = statement.where(DatasetRow.kind == request.kind)
        if request.open_data_only:
            statement = statement.where(DatasetRow.open_data.is_not(None))
        for word in request.query.lower().split():
            pattern = f"%{word}%"
            statement = statement.where(
                or_(
                    DatasetRow.dataset_id.ilike(pattern),
                    DatasetRow.display_name.ilike(pattern),
                    DatasetRow.description.ilike(pattern),
                )
            )
        rows, token = await keyset_page(
            self.db,
            self.page_tokens,
            request,
            statement,
            DatasetRow.dataset_id,
            size=page_size(request.page_size),
        )
        # JSON null and SQL NULL differ on some backends: drop entries whose publication is JSON null.
        if request.open_data_only:
            rows = [row for row in rows if row.open_data]
        return pb.ListDatasetsResponse(datasets=[dataset_proto(row) for row in rows], next_page_token=token)

    async def RegisterDataset(
        self, request: pb.RegisterDatasetRequest, context: grpc.aio.ServicerContext
    ) -> pb.Dataset:
        dataset = request.dataset
        problems = _check_registration(dataset)
        if problems:
            raise InvalidArgument.many(problems)
        caller = current_call().principal
        owner = dataset.owner_organization or caller.organization
        if not owner:
            raise InvalidArgument.field(
                "dataset.owner_organization", "required for a caller without organization"
            )
        if owner != caller.organization and not is_city_wide(caller):
            raise PermissionDenied(
                "only city-wide roles register datasets owned by another organization",
                reason="FOREIGN_OWNER",
                metadata={"owner_organization": owner},
            )
        entry = {
            "dataset_id": dataset.dataset_id,
            "display_name": dataset.display_name,
            "description": dataset.description,
            "kind": int(dataset.kind),
            "owner_organization": owner,
            "source": dataset.source or caller.client or caller.subject,
            "fields": [
                {
                    "name": f.name,
                    "type": f.type,
                    "description": f.description,
                    "classification": CLASS_NAMES[f.classification],
                    "nullable": f.nullable,
                }
                for f in dataset.fields
            ],
            "data_model": dataset.data_model,
            "update_frequency": dataset.update_frequency or "unknown",
            "licence": dataset.licence or "internal",
            "time_column": dataset.time_column,
            "area_column": dataset.area_column,
            "schema_version": dataset.schema_version or 1,
        }
        data_time = (
            dataset.data_update_time.ToDatetime(tzinfo=UTC) if dataset.HasField("data_update_time") else None
        )
        async with self.db.transaction() as tx:
            row = await tx.session.get(DatasetRow, dataset.dataset_id, with_for_update=True)
            if row is None:
                row = DatasetRow(
                    **entry,
                    open_data=None,
                    registered_by=caller.subject,
                    create_time=tx.now,
                    update_time=tx.now,
                    data_update_time=data_time,
                    etag="",
                )
                tx.session.add(row)
            else:
                if row.owner_organization != caller.organization and not is_city_wide(caller):
                    raise not_found("dataset", dataset_name(dataset.dataset_id))
                if row.owner_organization != owner:
                    raise InvalidArgument.field(
                        "dataset.owner_organization", f"the dataset is owned by {row.owner_organization}"
                    )
                for key, value in entry.items():
                    setattr(row, key, value)
                row.registered_by = caller.subject
                row.update_time = tx.now
                if data_time is not None:
                    row.data_update_time = data_time
            row.etag = _etag({**entry, "open_data": row.open_data, "data": str(row.data_update_time)})
            tx.emit(
                "datashare.dataset.registered",
                dataset_proto(row),
                subject=dataset_name(row.dataset_id),
                owner_organization=row.owner_organization,
            )
            return dataset_proto(row)

    async def PublishOpenData(
        self, request: pb.PublishOpenDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.Dataset:
        from cityos_datashare.enforce import check_publication

        dataset_id = parse_dataset_name(request.name)
        caller = current_call().principal
        async with self.db.transaction() as tx:
            row = await _owned(tx.session, dataset_id, caller, request.name)
            publication = check_publication(row, request.publication)
            publication["publish_time"] = tx.now.isoformat()
            publication["published_by"] = caller.subject
            row.open_data = publication
            row.update_time = tx.now
            row.etag = _etag({"id": row.dataset_id, "open_data": publication, "t": tx.now})
            tx.emit(
                "datashare.dataset.published",
                dataset_proto(row),
                subject=request.name,
                owner_organization=row.owner_organization,
            )
            return dataset_proto(row)

    async def WithdrawOpenData(
        self, request: pb.WithdrawOpenDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.Dataset:
        dataset_id = parse_dataset_name(request.name)
        caller = current_call().principal
        async with self.db.transaction() as tx:
            row = await _owned(tx.session, dataset_id, caller, request.name)
            if row.open_data:
                row.open_data = None
                row.update_time = tx.now
                row.etag = _etag({"id": row.dataset_id, "open_data": None, "t": tx.now})
                tx.emit(
                    "datashare.dataset.withdrawn",
                    dataset_proto(row),
                    subject=request.name,
                    owner_organization=row.owner_organization,
                )
            return dataset_proto(row)


async def _owned(session: Any, dataset_id: str, caller: Any, name: str) -> DatasetRow:
    """The dataset, if the caller's organization owns it (or the caller acts city-wide); else NOT_FOUND
    for a dataset that does not exist and PERMISSION_DENIED for one that does (the catalog is public)."""
    row: DatasetRow | None = await session.get(DatasetRow, dataset_id, with_for_update=True)
    if row is None:
        raise not_found("dataset", name)
    if row.owner_organization != caller.organization and not is_city_wide(caller):
        raise PermissionDenied(
            f"only {row.owner_organization} decides about {name}",
            reason="NOT_DATASET_OWNER",
            metadata={"owner_organization": row.owner_organization},
        )
    return row


def owned_clause(organization: str, city_wide: bool) -> Any:
    if city_wide:
        return true()
    return DatasetRow.owner_organization == organization if organization else false()


__all__: Sequence[str] = ["CatalogServicer", "dataset_proto", "parse_dataset_name", "sync_registry"]
