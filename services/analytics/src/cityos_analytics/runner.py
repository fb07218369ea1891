"""Running a job: open its engine, run it over the window, write its outputs and report, publish.

`run_job(name, start, end, ...)` is what `cityos analytics run` and a RayJob's entrypoint call:

1. open the job's engine (`Engines.dask()` or `Engines.ray()`: local, or the remote cluster's address);
2. `job.run(ctx)` reads the inputs over `[start, end)` and returns one Arrow table per declared output
   and an HTML report;
3. each output table goes to the lake with `write_rows` under the part id `run_id` (job and window), so
   running the same window again rewrites the same files with the new rows — never a second copy;
4. the report goes to `<lake>/reports/<job>/<run_id>.html` (and to `report_path` when given);
5. `job.publish(ctx, output)` hands results to a service (the manhole risk job's scores); without
   `services` (an offline run, a test of the computation) that step is skipped and the result says so;
6. with `services` that reach datashare, the outputs written are registered in its catalog with the
   time of their data (`cityos_analytics.catalog`; `published["catalog"]`).

Progress: `on_progress(total, done, step)` is called as steps complete (the CLI draws a rich bar).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cityos_analytics.catalog import DATASHARE, register_outputs
from cityos_analytics.engines import Engines
from cityos_analytics.jobs import JOBS, job_named
from cityos_analytics.jobs.base import Job, JobContext, run_id
from cityos_analytics.services import Services
from cityos_platform.lake import Lake
from cityos_platform.lake.files import write_rows

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass
class RunResult:
    """What a run did: rows and files per output table, the report, and what `publish` returned."""

    job: str
    run_id: str
    rows: dict[str, int]
    files: dict[str, list[str]]
    report: str
    published: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    engine_start_s: float = 0.0
    seconds: float = 0.0


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def run_job(
    name: str,
    start: datetime,
    end: datetime,
    *,
    lake: Lake,
    engines: Engines | None = None,
    services: Services | None = None,
    now: datetime | None = None,
    params: dict[str, Any] | None = None,
    report_path: Path | None = None,
    on_progress: Progress | None = None,
) -> RunResult:
    """Run job `name` over [start, end) (see the module doc)."""
    job = job_named(name)
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError(f"the window is empty: end {end.isoformat()} is not after start {start.isoformat()}")
    engines = engines or Engines()
    total = len(job.steps) + 2  # + writing the outputs, + publishing
    done = 0

    def advance(step: str) -> None:
        nonlocal done
        done = min(done + 1, total)
        if on_progress is not None:
            on_progress(total, done, step)

    def extend(n: int) -> None:
        nonlocal total
        total += n
        if on_progress is not None:
            on_progress(total, done, "")

    if on_progress is not None:
        on_progress(total, done, f"starting {job.engine}")
    began = time.perf_counter()
    ctx = JobContext(
        job=job.name,
        start=start,
        end=end,
        lake=lake,
        engines=engines,
        now=_utc(now) if now is not None else end,
        advance=advance,
        extend=extend,
        services=services,
        params=dict(params or {}),
    )
    opener = engines.dask() if job.engine == "dask" else engines.ray()
    with opener:
        output = job.run(ctx)
    declared = {spec.name: spec for spec in job.outputs}
    if set(output.tables) != set(declared):
        raise RuntimeError(
            f"job {job.name} returned tables {sorted(output.tables)}, declared {sorted(declared)}"
        )
    rows: dict[str, int] = {}
    files: dict[str, list[str]] = {}
    part = run_id(job.name, start, end)
    for table_name, rows_table in output.tables.items():
        files[table_name] = (
            write_rows(lake, declared[table_name], rows_table, part) if rows_table.num_rows else []
        )
        rows[table_name] = rows_table.num_rows
    report = lake.path("reports", job.name, f"{part}.html")
    lake.write_bytes_atomic(output.report_html.encode(), report)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(output.report_html)
    advance("writing the outputs")
    published: dict[str, Any] = {}
    if type(job).publish is not Job.publish:
        if services is None:
            published = {"skipped": "no services given: the results stay in the lake"}
        else:
            published = asyncio.run(job.publish(ctx, output))
    if services is not None and DATASHARE in services.endpoints:
        written = [declared[table_name] for table_name, paths in files.items() if paths]
        published["catalog"] = asyncio.run(register_outputs(services, written, ctx.now))
    advance("done")
    result = RunResult(
        job=job.name,
        run_id=part,
        rows=rows,
        files=files,
        report=report,
        published=published,
        summary=dict(output.summary),
        engine_start_s=engines.start_seconds,
        seconds=time.perf_counter() - began,
    )
    log.info("job %s %s: rows %s, report %s", job.name, part, rows, report)
    return result


__all__ = ["JOBS", "RunResult", "run_job"]
