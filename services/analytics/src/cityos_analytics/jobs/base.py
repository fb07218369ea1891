"""What a job is: declared inputs and outputs, an engine, steps, and a run over a time window.

A job is a class with a `name` (`cityos analytics run <name>`), the lake tables it reads (`inputs`), the
tables it writes (`outputs`, TableSpecs installed into the lake's registry through the
`cityos.lake_tables` entry point, so `read_table` and the datashare catalog know them), the engine it
runs on (`dask` for dataframe aggregation, `ray` for many independent models) and `steps`, the names the
progress bar shows. `run(ctx)` reads its inputs for `[ctx.start, ctx.end)` through `ctx.read` (Dask) or
`ctx.read_dataset`/`ctx.read_arrow` (Ray), computes, and returns a `JobOutput`: one Arrow table per
output plus an HTML report. The runner (`cityos_analytics.runner`) writes the tables to the lake and the
report next to them; a job never writes the lake itself, so every job gets the same idempotent writes.
`publish(ctx, output)` is the optional last step that hands results to a service (the manhole risk job
writes its scores back with SetRiskScores).

A job's code runs unchanged on a laptop and on a cluster: it only ever talks to the engine the runner
opened (`ctx.engines`), never starts one itself.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa

from cityos_platform.lake import Lake, TableSpec
from cityos_platform.lake.read import Filters, plan_read

if TYPE_CHECKING:
    import dask.dataframe as dd
    import ray.data

    from cityos_analytics.engines import Engines
    from cityos_analytics.services import Services

Engine = Literal["dask", "ray"]


@dataclass(frozen=True)
class JobOutput:
    """What a run produced: a table per declared output, and an HTML report."""

    tables: dict[str, pa.Table]
    report_html: str
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobContext:
    """Everything a run needs: the window, the lake, the open engine, progress and the services."""

    job: str
    start: datetime
    end: datetime
    lake: Lake
    engines: Engines
    #: When the run computes (its `computed_time`): the window's end unless the caller says otherwise.
    now: datetime
    #: Advance the progress bar by one step, naming it (`advance("fitting models")`).
    advance: Callable[[str], None] = lambda _step: None
    #: Grow the progress bar by `n` steps (a job that learns how many models it fits).
    extend: Callable[[int], None] = lambda _n: None
    services: Services | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """The run's id: job and window (the same window gives the same id, so a re-run overwrites)."""
        return run_id(self.job, self.start, self.end)

    def read(
        self, name: str, columns: Sequence[str] | None = None, filters: Filters | None = None
    ) -> dd.DataFrame:
        """An input table over the window, as a Dask DataFrame (pushdown as in `read_table`)."""
        from cityos_platform.lake import read_table

        return read_table(name, self.start, self.end, columns, filters, lake=self.lake)

    def read_dataset(
        self, name: str, columns: Sequence[str] | None = None, filters: Filters | None = None
    ) -> ray.data.Dataset:
        """An input table over the window, as a Ray Dataset."""
        from cityos_platform.lake import read_dataset

        return read_dataset(name, self.start, self.end, columns, filters, lake=self.lake)

    def ray_map(
        self, task: Callable[..., Any], inputs: dict[str, tuple[Any, ...]], label: str
    ) -> dict[str, Any]:
        """Run `task(*args)` as one Ray task per key of `inputs` (each argument put in the object store
        once), advancing the progress bar (`<label> <key>`) as each finishes; the results by key."""
        if not inputs:
            return {}
        import ray

        self.extend(len(inputs))
        remote = ray.remote(task)
        pending = {remote.remote(*(ray.put(arg) for arg in args)): key for key, args in inputs.items()}
        results: dict[str, Any] = {}
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                results[pending[ref]] = ray.get(ref)
                self.advance(f"{label} {pending[ref]}")
        return results

    def read_arrow(
        self, name: str, columns: Sequence[str] | None = None, filters: Filters | None = None
    ) -> pa.Table:
        """An input table over the window read here, in this process, as one Arrow table (for a job
        that splits the rows into independent models itself)."""
        plan = plan_read(name, self.start, self.end, columns, filters, lake=self.lake)
        parts = [plan.reader.arrow(group) for group in plan.groups]
        return pa.concat_tables(parts) if parts else plan.empty()


def run_id(job: str, start: datetime, end: datetime) -> str:
    """`<job>-<start>-<end>` in compact UTC, e.g. `manhole-risk-20261101T0000-20261108T0000`."""
    return f"{job}-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}"


def model_version(job: str, version: int, start: datetime, end: datetime) -> str:
    """A model's version: the job, its algorithm version and a short hash of the training window."""
    digest = hashlib.sha256(f"{start.isoformat()}/{end.isoformat()}".encode()).hexdigest()[:8]
    return f"{job}-v{version}-{digest}"


class Job(abc.ABC):
    """One analytics job (see the module doc)."""

    name: ClassVar[str]
    title: ClassVar[str]
    engine: ClassVar[Engine]
    inputs: ClassVar[tuple[str, ...]]
    outputs: ClassVar[tuple[TableSpec, ...]]
    steps: ClassVar[tuple[str, ...]]
    #: Services the job calls, in `run` (to read an inventory) or in `publish` (the CLI then builds
    #: `ctx.services`: their endpoints and the analytics client's token).
    calls: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def run(self, ctx: JobContext) -> JobOutput:
        """Read the inputs over the window, compute, and return the outputs and a report."""

    async def publish(self, ctx: JobContext, output: JobOutput) -> dict[str, Any]:
        """Hand results to a service after they are in the lake (default: nothing)."""
        return {}
