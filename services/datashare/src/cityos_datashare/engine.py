"""Running a checked read (`enforce.Plan`) over the lake: batches out, the grant re-checked between them.

Row-level reads stream the files of the table (time-pruned by partition, filtered by Arrow with the scope
and the conditions pushed down) in batches of `batch_rows`. Aggregated reads combine per-file-group
partial aggregates (sums, non-null counts, minima, maxima, row counts) into the final groups, then apply
the floor, so memory holds groups, not rows. Before each batch (and each file group of an aggregation)
the caller's `still_granted()` is awaited: a revocation or an expiry stops the read there
(FAILED_PRECONDITION, AGREEMENT_NOT_IN_FORCE) — rows already sent stay sent, none follow.

File reads run in a worker thread, so a long read never blocks the service's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from cityos_datashare.enforce import Plan
from cityos_platform.errors import FailedPrecondition
from cityos_platform.lake import Lake
from cityos_platform.lake.read import ReadPlan, plan_read

# Small file groups: the grant is re-checked between groups, so a revocation stops an aggregation soon.
GROUP_BYTES = 16 * 1024 * 1024

StillGranted = Callable[[], Awaitable[bool]]


class NotInForce(FailedPrecondition):
    def __init__(self, agreement: str) -> None:
        super().__init__(
            f"{agreement} is not in force (revoked, expired or not approved): the read stopped",
            reason="AGREEMENT_NOT_IN_FORCE",
            metadata={"agreement": agreement},
        )


@dataclass
class Outcome:
    rows: int = 0
    suppressed_groups: int = 0
    completed: bool = False


async def _check(still_granted: StillGranted, agreement: str) -> None:
    if not await still_granted():
        raise NotInForce(agreement)


def _output_schema(plan: Plan, table_schema: pa.Schema) -> pa.Schema:
    if not plan.aggregated:
        return pa.schema([table_schema.field(c) for c in plan.output_columns])
    fields = [table_schema.field(c) for c in plan.group_by] + [pa.field("row_count", pa.int64())]
    for measure in plan.measures:
        if measure.function == "count":
            fields.append(pa.field(measure.output, pa.int64()))
        elif measure.function == "mean":
            fields.append(pa.field(measure.output, pa.float64()))
        else:
            fields.append(pa.field(measure.output, table_schema.field(measure.column).type))
    return pa.schema(fields)


def output_schema(plan: Plan, lake: Lake) -> pa.Schema:
    read = plan_read(plan.table, columns=list(plan.read_columns), lake=lake)
    return _output_schema(plan, read.spec.schema)


async def run(
    plan: Plan,
    lake: Lake,
    *,
    batch_rows: int,
    still_granted: StillGranted,
    agreement: str,
    outcome: Outcome,
) -> AsyncIterator[pa.RecordBatch]:
    """The result in record batches; `outcome` holds the counts when the iteration ends."""
    try:
        read = await asyncio.to_thread(
            plan_read,
            plan.table,
            None if plan.empty else plan.start,
            None if plan.empty else plan.end,
            list(plan.read_columns),
            [list(plan.filters)] if plan.filters else None,
            lake=lake,
            partition_bytes=GROUP_BYTES,
        )
    except KeyError:
        raise FailedPrecondition(
            f"{plan.table} is in the catalog but this installation's lake has no such table",
            reason="TABLE_NOT_INSTALLED",
            metadata={"table": plan.table},
        ) from None
    schema = _output_schema(plan, read.spec.schema)
    groups = [] if plan.empty else read.groups
    await _check(still_granted, agreement)
    if plan.aggregated:
        async for batch in _aggregate(
            plan, read, groups, schema, batch_rows, still_granted, agreement, outcome
        ):
            yield batch
    else:
        for paths in groups:
            await _check(still_granted, agreement)
            table = await asyncio.to_thread(read.reader.arrow, paths)
            for batch in table.select(list(plan.output_columns)).to_batches(max_chunksize=batch_rows):
                if outcome.rows >= plan.limit:
                    break
                batch = batch.slice(0, plan.limit - outcome.rows)
                if batch.num_rows == 0:
                    continue
                await _check(still_granted, agreement)
                outcome.rows += batch.num_rows
                yield batch.cast(schema) if batch.schema != schema else batch
            if outcome.rows >= plan.limit:
                break
    outcome.completed = True


def _partial(plan: Plan, table: pa.Table) -> pa.Table:
    aggregations: list[tuple[object, str]] = [([], "count_all")]
    for measure in plan.measures:
        if measure.function in ("sum", "mean"):
            aggregations += [(measure.column, "sum"), (measure.column, "count")]
        elif measure.function == "count":
            aggregations.append((measure.column, "count"))
        else:
            aggregations.append((measure.column, measure.function))
    return table.group_by(list(plan.group_by), use_threads=False).aggregate(aggregations)


def _combine(plan: Plan, partials: list[pa.Table], schema: pa.Schema) -> pa.Table:
    merged = pa.concat_tables(partials, promote_options="permissive")
    finals: list[tuple[str, str]] = [("count_all", "sum")]
    seen = {"count_all"}
    for name in merged.column_names:
        if name in plan.group_by or name in seen:
            continue
        seen.add(name)
        function = name.rsplit("_", 1)[1]
        finals.append((name, {"count": "sum", "sum": "sum", "min": "min", "max": "max"}[function]))
    combined = merged.group_by(list(plan.group_by), use_threads=False).aggregate(finals)
    columns: dict[str, pa.Array] = {key: combined[key] for key in plan.group_by}
    columns["row_count"] = combined["count_all_sum"]
    for measure in plan.measures:
        column = measure.column
        if measure.function == "count":
            columns[measure.output] = combined[f"{column}_count_sum"]
        elif measure.function == "sum":
            columns[measure.output] = combined[f"{column}_sum_sum"]
        elif measure.function == "mean":
            total = pc.cast(combined[f"{column}_sum_sum"], pa.float64())
            counted = pc.cast(combined[f"{column}_count_sum"], pa.float64())
            columns[measure.output] = pc.if_else(pc.equal(counted, 0.0), None, pc.divide(total, counted))
        else:
            columns[measure.output] = combined[f"{column}_{measure.function}_{measure.function}"]
    return pa.table(columns).cast(schema)


async def _aggregate(
    plan: Plan,
    read: ReadPlan,
    groups: list[list[str]],
    schema: pa.Schema,
    batch_rows: int,
    still_granted: StillGranted,
    agreement: str,
    outcome: Outcome,
) -> AsyncIterator[pa.RecordBatch]:
    partials: list[pa.Table] = []
    for paths in groups:
        await _check(still_granted, agreement)
        table = await asyncio.to_thread(read.reader.arrow, paths)
        if table.num_rows:
            partials.append(await asyncio.to_thread(_partial, plan, table))
    if not partials:
        return
    result = await asyncio.to_thread(_combine, plan, partials, schema)
    keep = pc.greater_equal(result["row_count"], max(plan.min_group_size, 1))
    outcome.suppressed_groups = result.num_rows - pc.sum(keep).as_py()
    result = result.filter(keep).sort_by([(key, "ascending") for key in plan.group_by])
    for batch in result.to_batches(max_chunksize=batch_rows):
        if outcome.rows >= plan.limit:
            break
        batch = batch.slice(0, plan.limit - outcome.rows)
        await _check(still_granted, agreement)
        outcome.rows += batch.num_rows
        yield batch


def ipc_bytes(batch: pa.RecordBatch) -> bytes:
    """One self-contained Arrow IPC stream: the schema and this batch."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())
