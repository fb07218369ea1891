"""Registering a run's outputs in the datashare catalog.

Datashare registers every installed output table when it starts (from the same `TableSpec`s, through the
`cityos.lake_tables` entry point), so a job's outputs are in the catalog without any step of its own.
After a run the runner calls `CatalogService.RegisterDataset` for each output table it wrote, as the
client `cityos-analytics` (city-wide `service` role), to refresh the entry and record when its data last
changed (`data_update_time`). A failure here never fails the run: the rows are in the lake, and the
result says what happened.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import grpc

from cityos.datashare.v1 import datashare_pb2 as pb
from cityos.datashare.v1 import datashare_pb2_grpc
from cityos_analytics.services import Services
from cityos_platform.lake.tables import TableSpec

log = logging.getLogger(__name__)
DATASHARE = "datashare"
CLASSIFICATION = {
    "public": pb.CLASSIFICATION_PUBLIC,
    "internal": pb.CLASSIFICATION_INTERNAL,
    "personal": pb.CLASSIFICATION_PERSONAL,
    "sensitive": pb.CLASSIFICATION_SENSITIVE,
}


def dataset_of(spec: TableSpec, data_time: datetime) -> pb.Dataset:
    """A lake table's catalog entry (the same one datashare derives at start), with its data time."""
    dataset = pb.Dataset(
        dataset_id=spec.name,
        display_name=spec.name.replace("_", " ").capitalize(),
        description=spec.description,
        kind=pb.DATASET_KIND_LAKE_TABLE,
        owner_organization=spec.owner,
        source=spec.source,
        fields=[
            pb.DatasetField(
                name=str(entry["name"]),
                type=str(entry["type"]),
                description=str(entry["description"]),
                classification=CLASSIFICATION[str(entry["classification"])],
                nullable=bool(entry["nullable"]),
            )
            for entry in spec.catalog_fields()
        ],
        data_model=spec.data_model,
        update_frequency=spec.update_frequency,
        licence=spec.licence,
        time_column=spec.time_column,
        area_column=spec.area_column,
        schema_version=spec.version,
    )
    dataset.data_update_time.FromDatetime(data_time)
    return dataset


async def register_outputs(
    services: Services, specs: Sequence[TableSpec], data_time: datetime
) -> dict[str, Any]:
    """RegisterDataset for each spec; {"registered": [...]} or {"skipped"/"error": why}."""
    if DATASHARE not in services.endpoints:
        return {"skipped": "no address for the datashare service: the catalog keeps its entries as they are"}

    async def register(channel: grpc.aio.Channel) -> list[str]:
        stub = datashare_pb2_grpc.CatalogServiceStub(channel)
        names = []
        for spec in specs:
            answer = await stub.RegisterDataset(
                pb.RegisterDatasetRequest(dataset=dataset_of(spec, data_time)), timeout=10
            )
            names.append(answer.name)
        return names

    try:
        return {"registered": await services.call(DATASHARE, register)}
    except grpc.aio.AioRpcError as error:
        log.warning("could not register the outputs in the datashare catalog: %s", error.details())
        return {"error": f"{error.code().name}: {error.details()}"}
