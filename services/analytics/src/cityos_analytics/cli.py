"""`cityos analytics`: list the jobs and run one — locally, on a remote cluster, or on Kubernetes.

    cityos analytics jobs
    cityos analytics run manhole-risk --start 2026-11-01 --end 2026-11-08
    cityos analytics run parking-forecast --start … --end … --ray-address ray://ray-head:10001
    cityos analytics run streetlight-report --start … --end … --dask-scheduler tcp://dask:8786
    cityos analytics run device-anomalies --start … --end … --kubernetes [--dry-run] [--wait]

The lake is the settings' (`CITYOS_LAKE_*`, else `<var_dir>/lake`); a job that calls a service (the
manhole risk job) reaches it as the client `cityos-analytics` (see `services.py`). This module stays
light: the engines and jobs load only when a command runs.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    help="Run analytics jobs over the lake (Dask, Ray; local, remote or Kubernetes).", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)


def parse_time(value: str, what: str) -> datetime:
    """An ISO 8601 date or date-time; naive means UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 date or date-time", param_hint=what) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_params(items: list[str]) -> dict[str, Any]:
    """`name=value` pairs as a job's params: the value parsed as JSON (numbers, booleans, lists,
    objects), else kept as text."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not name=value", param_hint="--param")
        try:
            params[name.strip()] = json.loads(value)
        except ValueError:
            params[name.strip()] = value
    return params


def _window(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    stop = parse_time(end, "--end") if end else today
    begin = parse_time(start, "--start") if start else stop - timedelta(days=7)
    if stop <= begin:
        raise typer.BadParameter(f"--end ({stop.isoformat()}) must be after --start ({begin.isoformat()})")
    return begin, stop


@app.command("jobs")
def jobs_command() -> None:
    """List the jobs: engine, input tables and output tables."""
    from cityos_analytics.jobs import JOBS

    table = Table("job", "engine", "reads", "writes", "what")
    for job in JOBS.values():
        table.add_row(
            job.name,
            job.engine,
            ", ".join(job.inputs),
            ", ".join(spec.name for spec in job.outputs),
            job.title,
        )
    console.print(table)


@app.command("run")
def run_command(
    job: Annotated[
        str, typer.Argument(help="the job, e.g. manhole-risk (`cityos analytics jobs` lists them)")
    ],
    start: Annotated[
        str | None, typer.Option(help="window start, ISO 8601, UTC if naive (default: end - 7 days)")
    ] = None,
    end: Annotated[str | None, typer.Option(help="window end, exclusive (default: today 00:00 UTC)")] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="a Ray cluster: ray://host:10001, or auto inside one (default: local)")
    ] = None,
    dask_scheduler: Annotated[
        str | None, typer.Option(help="a Dask scheduler: tcp://host:8786 (default: a local cluster)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="local workers (default: the cores, at most 8)")] = None,
    report: Annotated[Path | None, typer.Option(help="also write the HTML report here")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(help="a job parameter, name=value (the value as JSON, else text); repeat for several"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="draw a progress bar")] = True,
    kubernetes: Annotated[
        bool, typer.Option(help="run it as a KubeRay RayJob in the cluster instead")
    ] = False,
    namespace: Annotated[str, typer.Option(help="--kubernetes: the namespace")] = "cityos",
    image: Annotated[str | None, typer.Option(help="--kubernetes: the CityOS image the Ray pods run")] = None,
    service_account: Annotated[
        str, typer.Option(help="--kubernetes: the Ray pods' service account")
    ] = "cityos-analytics",
    k8s_workers: Annotated[int, typer.Option(help="--kubernetes: Ray worker pods")] = 2,
    dry_run: Annotated[
        bool, typer.Option(help="--kubernetes: print the RayJob instead of creating it")
    ] = False,
    wait: Annotated[bool, typer.Option(help="--kubernetes: wait until the RayJob finishes")] = False,
) -> None:
    """Run a job over [start, end): here (local Dask or Ray), on a remote cluster, or on Kubernetes."""
    from cityos_analytics.jobs import JOBS, job_named

    if job not in JOBS:
        err.print(f"[red]no analytics job {job!r}; jobs: {', '.join(sorted(JOBS))}[/red]")
        raise typer.Exit(2)
    begin, stop = _window(start, end)
    params = parse_params(param or [])
    if kubernetes:
        raise typer.Exit(
            _run_on_kubernetes(
                job,
                begin,
                stop,
                namespace,
                image,
                service_account,
                k8s_workers,
                dry_run,
                wait,
                dask_scheduler,
                param or [],
            )
        )
    import grpc

    from cityos_analytics.engines import Engines, default_workers
    from cityos_analytics.runner import run_job
    from cityos_analytics.services import ENDPOINTS_FILE, Services, ServicesUnavailable
    from cityos_platform.config import ConfigError, load_settings
    from cityos_platform.lake.read import default_lake
    from cityos_platform.logs import configure_logging

    try:
        settings = load_settings()
    except ConfigError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    configure_logging("analytics", settings.log_level, settings.log_format)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    definition = job_named(job)
    services = None
    # Jobs that call services need them; every run registers its outputs in the datashare catalog when
    # the city's addresses are known (cityos_analytics.catalog).
    city_known = bool(settings.endpoints) or (settings.var_dir / ENDPOINTS_FILE).exists()
    if definition.calls or city_known:
        try:
            services = Services.from_settings(settings)
        except ServicesUnavailable as error:
            if definition.calls:
                err.print(f"[red]{error}[/red]")
                raise typer.Exit(2) from None
    if definition.calls and services is not None:
        missing = [name for name in definition.calls if name not in services.endpoints]
        if missing:
            # e.g. the embedded city is not running: the job runs on what the lake holds alone
            err.print(
                f"[yellow]no address for {', '.join(missing)} (CITYOS_ENDPOINTS, or var/endpoints.json "
                "of a running `make run`): the job runs without calling the services[/yellow]"
            )
            services = None
    engines = Engines(
        dask_scheduler=dask_scheduler, ray_address=ray_address, workers=workers or default_workers()
    )
    lake = default_lake()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        disable=not progress,
    ) as bar:
        task = bar.add_task(job, total=None)

        def on_progress(total: int, done: int, step: str) -> None:
            bar.update(task, total=total, completed=done, description=f"{job}: {step}" if step else job)

        try:
            result = run_job(
                job,
                begin,
                stop,
                lake=lake,
                engines=engines,
                services=services,
                report_path=report,
                on_progress=on_progress,
                params=params,
            )
        except (ServicesUnavailable, grpc.RpcError) as error:
            details = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
            err.print(f"[red]{job}: a service call failed: {details}[/red]")
            raise typer.Exit(1) from None
    summary: dict[str, Any] = {
        "job": result.job,
        "run_id": result.run_id,
        "rows": result.rows,
        "report": result.report,
        "published": result.published,
        "summary": result.summary,
        "engine_start_s": round(result.engine_start_s, 2),
        "seconds": round(result.seconds, 2),
    }
    console.print_json(json.dumps(summary, default=str))


def _run_on_kubernetes(
    job: str,
    start: datetime,
    end: datetime,
    namespace: str,
    image: str | None,
    service_account: str,
    workers: int,
    dry_run: bool,
    wait: bool,
    dask_scheduler: str | None,
    params: list[str],
) -> int:
    from cityos_analytics import kube

    options = kube.KubeOptions(
        namespace=namespace,
        service_account=service_account,
        workers=workers,
        extra_args=(
            *(("--dask-scheduler", dask_scheduler) if dask_scheduler else ()),
            *(arg for item in params for arg in ("--param", item)),
        ),
    )
    if image:
        options.image = image
    manifest = kube.rayjob_manifest(job, start, end, options)
    if dry_run:
        console.print_json(json.dumps(manifest))
        return 0
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException

    try:
        created = kube.submit(manifest)
    except (ConfigException, ApiException) as error:
        err.print(f"[red]could not create the RayJob: {error}[/red]")
        return 1
    name = created["metadata"]["name"]
    console.print(f"created RayJob {namespace}/{name} (kubectl get rayjob -n {namespace} {name})")
    if not wait:
        return 0
    status = kube.wait(name, namespace, on_status=lambda s: console.print(f"{name}: {s}"))
    return 0 if status == "SUCCEEDED" else 1
