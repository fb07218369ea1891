"""The `cityos` command."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Coroutine
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cityos_platform import __version__
from cityos_platform.authz import Authenticator
from cityos_platform.config import ConfigError, Settings, load_settings
from cityos_platform.logs import configure_logging
from cityos_platform.registry import UnknownService, discover, lookup
from cityos_platform.server import serve, serve_until_signalled

app = typer.Typer(help="CityOS: run and operate the city's services.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)
log = logging.getLogger("cityos")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


@app.command()
def dev() -> None:
    """Start every installed service on localhost (embedded mode); Ctrl-C stops them all."""
    from cityos_platform.launcher import Launcher

    raise typer.Exit(Launcher(_settings(), console).run())


@app.command("serve")
def serve_command(name: Annotated[str, typer.Argument(help="the service to serve, e.g. parking")]) -> None:
    """Serve one service in this process until SIGTERM or SIGINT."""
    settings = _settings()
    configure_logging(name, settings.log_level, settings.log_format)
    try:
        definition = lookup(name)
    except UnknownService as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    if settings.workers > 1 and settings.worker_index is None:
        raise typer.Exit(supervise_workers(definition.name, settings))
    run_to_completion(_serve(definition.name, definition.load_factory()(settings), settings))


def supervise_workers(name: str, settings: Settings) -> int:
    """Run `settings.workers` processes of the service on one port and stop them together.

    The first worker starts alone (it migrates the database) and the others join once it answers
    health, so migrations never race. SIGTERM/SIGINT are passed on; when a worker exits by itself the
    others are stopped and its status returned (the orchestrator restarts the pod)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cityos_platform.launcher import health_status, port_is_free

    if settings.port == 0:
        err.print("[red]CITYOS_WORKERS > 1 needs a fixed CITYOS_PORT (the workers share it)[/red]")
        return 2
    if settings.host in ("127.0.0.1", "0.0.0.0", "localhost") and not port_is_free(settings.port):
        err.print(f"[red]port {settings.port} is already in use[/red]")
        return 2
    stop = {"signal": 0}

    def forward(signum: int, frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "[::]", "localhost") else settings.host
    address = f"{host}:{settings.port}"

    def start(index: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "CITYOS_WORKER_INDEX": str(index)}
        return subprocess.Popen([sys.executable, "-m", "cityos_platform.cli", "serve", name], env=env)

    workers = [start(0)]
    log.info("supervising %d workers of %s on port %d", settings.workers, name, settings.port)
    deadline = time.monotonic() + 120
    while health_status(address) is None and not stop["signal"] and workers[0].poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not stop["signal"] and workers[0].poll() is None:
        workers += [start(index) for index in range(1, settings.workers)]
    status = 0
    while not stop["signal"]:
        exited = next((worker for worker in workers if worker.poll() is not None), None)
        if exited is not None:
            status = exited.returncode or 1
            log.error(
                "worker %d of %s exited with %s; stopping the others", workers.index(exited), name, status
            )
            break
        time.sleep(0.2)
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    limit = time.monotonic() + settings.grace_s + settings.drain_delay_s + 10
    for worker in workers:
        try:
            worker.wait(timeout=max(0.1, limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return status


LEFTOVER_WAIT_S = 3.0


def run_to_completion(main: Coroutine[Any, Any, None], leftover_wait_s: float = LEFTOVER_WAIT_S) -> None:
    """`asyncio.run`, except that tasks still pending once `main` returned get `leftover_wait_s` to
    finish after being cancelled, not forever. A library's clean-up task can wait on something that
    will never come: aiosqlite's `close()` awaits its worker thread in a `finally`, even when a forced
    close on a cancelled call already stopped that thread, so `asyncio.run` hung at exit and the
    launcher had to kill the process. Such tasks are logged and abandoned; the process exits."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main)
    finally:
        try:
            leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                _, pending = loop.run_until_complete(asyncio.wait(leftovers, timeout=leftover_wait_s))
                for task in pending:
                    log.warning("abandoning a task that did not finish when cancelled at exit: %r", task)
                    # Said once here; asyncio would say it again as an ERROR when the task is collected.
                    task._log_destroy_pending = False  # type: ignore[attr-defined]
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), leftover_wait_s))
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), leftover_wait_s))
        except TimeoutError:
            log.warning(
                "async generators or the executor did not close within %.0f s at exit", leftover_wait_s
            )
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(name: str, service_app: object, settings: Settings) -> None:
    mounts = await service_app.start()  # type: ignore[attr-defined]
    try:
        authenticator = Authenticator.from_settings(
            settings,
            prefixed=getattr(service_app, "token_verifiers", None),
            certificate_verifier=getattr(service_app, "certificate_verifier", None),
        )
        running = await serve(mounts, settings, label=name, authenticator=authenticator)
        # What start-up made (modules, descriptors, settings, caches) lives as long as the process:
        # out of the collector's generations, full collections no longer scan it on every pass.
        gc.freeze()
        await serve_until_signalled(running)
    finally:
        await service_app.stop()  # type: ignore[attr-defined]


@app.command()
def token(
    subject: Annotated[
        str, typer.Option("--subject", "-s", help="the token's subject (user or client id)")
    ] = "dev",
    organization: Annotated[
        str, typer.Option("--org", "-o", help="the caller's organization id")
    ] = "city-office",
    role: Annotated[list[str] | None, typer.Option("--role", "-r", help="a role; repeat for several")] = None,
    scope: Annotated[
        list[str] | None, typer.Option(help="a permission scope (as API-key tokens carry)")
    ] = None,
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 3600,
    service: Annotated[
        bool, typer.Option(help="shape it as a service account's client-credentials token")
    ] = False,
) -> None:
    """Mint a token from the development issuer (embedded mode only; production tokens come from Keycloak)."""
    from cityos_platform.issuer import DevIssuer

    settings = _settings()
    if settings.mode == "production":
        err.print("[red]cityos token is for the embedded mode; in production ask Keycloak for a token[/red]")
        raise typer.Exit(2)
    key_dir = settings.var_dir / "issuer"
    recorded = key_dir / "issuer-url"
    url = recorded.read_text().strip() if recorded.exists() else settings.auth_issuer
    issuer = DevIssuer(key_dir, url)
    print(
        issuer.mint(
            subject,
            organization,
            role if role is not None else ["city-admin"],
            ttl_s=ttl,
            scopes=scope or (),
            kind="service" if service else None,
            client=subject if service else "cityos-cli",
        )
    )


@app.command()
def simulate(
    speedup: Annotated[float, typer.Option(help="how many times faster than real devices report")] = 30.0,
) -> None:
    """Run every installed device simulator against the running embedded city (as `cityos dev` does).

    Reads CITYOS_ENDPOINTS (JSON: service -> address) and CITYOS_SIMULATOR_TOKEN from the environment."""
    import json
    import os
    from importlib.metadata import entry_points
    from pathlib import Path

    settings = _settings()
    configure_logging("simulator", settings.log_level, settings.log_format)
    endpoints = json.loads(os.environ.get("CITYOS_ENDPOINTS", "{}"))
    token = os.environ.get("CITYOS_SIMULATOR_TOKEN", "")
    runners = [entry.load() for entry in entry_points(group="cityos.simulators") if entry.name in endpoints]
    if not runners or not token:
        err.print("no simulator to run (needs CITYOS_ENDPOINTS with its service, and CITYOS_SIMULATOR_TOKEN)")
        raise typer.Exit(2)

    async def run_all() -> None:
        await asyncio.gather(*(run(endpoints, token, Path(settings.var_dir), speedup) for run in runners))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_all())


@app.command()
def services() -> None:
    """List the installed services and their embedded-mode ports."""
    found = discover()
    if not found:
        console.print("no services installed")
        return
    table = Table("service", "dev port", "factory", "description")
    for definition in found.values():
        table.add_row(definition.name, str(definition.dev_port), definition.factory, definition.description)
    console.print(table)


@app.command()
def version() -> None:
    """Print the platform version."""
    console.print(__version__)


def add_installed_commands(target: typer.Typer) -> None:
    """Add the command groups installed packages declare (entry point group `cityos.commands`, each a
    Typer app named by its entry, e.g. `cityos analytics …`); one that fails to load is reported and
    left out, never fatal to the other commands."""
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group="cityos.commands"), key=lambda e: e.name):
        try:
            target.add_typer(entry.load(), name=entry.name)
        except Exception as error:  # a broken plugin must not take the CLI down
            err.print(f"[yellow]cityos {entry.name}: not available ({error})[/yellow]")


def main() -> None:
    add_installed_commands(app)
    app()


if __name__ == "__main__":
    main()
