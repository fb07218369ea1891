"""`cityos dev`: the embedded launcher.

Starts every installed service (found through the `cityos.services` entry points) as its own process on
its own localhost port, waits until each reports SERVING on gRPC health, prints the endpoints, and on
Ctrl-C (SIGINT) or SIGTERM stops them all gracefully. A service that dies takes the group down with a
pointer to its log, so a broken city never looks alive.

Services call one another as in production: every child learns all the addresses (`CITYOS_ENDPOINTS`,
the ports chosen before any child starts) and gets its client secret (`CITYOS_AUTH_CLIENT_SECRET`) for
the client `cityos-<name>`, which the development issuer's token endpoint answers. One secret, created
once under `var/issuer/` (mode 0600), serves every service's client: this is a development city.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from cityos_platform.config import Settings
from cityos_platform.issuer import (
    CLIENT_SECRET_FILE,
    DevIssuer,
    DevIssuerServer,
    load_or_create_client_secret,
)
from cityos_platform.registry import ServiceDefinition, discover

READY_TIMEOUT_S = 120.0
SIMULATOR_GROUP = "cityos.simulators"
DEV_ISSUER_PORT = 8099  # matches the default CITYOS_AUTH_ISSUER


@dataclass
class Child:
    name: str
    port: int  # 0 for a process that serves nothing (the simulator)
    log_path: Path
    process: subprocess.Popen[bytes]
    http_port: int = 0  # the service's HTTP listener, if it has one

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def port_is_free(port: int) -> bool:
    """Whether a server could listen on the port now. SO_REUSEADDR, as the gRPC and HTTP servers set it:
    connections of a previous run lingering in TIME_WAIT do not make the port busy, so a restarted city
    gets its usual ports back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def health_status(address: str, timeout: float = 1.0) -> int | None:
    """The overall health status of the server at `address`, or None when it does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return None
    return int(response.status)


class Launcher:
    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.children: list[Child] = []
        self.stop_requested = False

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True

    @staticmethod
    def plan_ports(definitions: list[ServiceDefinition]) -> dict[str, int]:
        """A distinct port per service, chosen before any starts (so each can be told where the others
        are): its `dev_port`, or a free one when that is taken."""
        ports: dict[str, int] = {}
        for definition in definitions:
            port = definition.dev_port
            while port in ports.values() or not port_is_free(port):
                port = free_port()
            ports[definition.name] = port
        return ports

    @staticmethod
    def plan_http_ports(definitions: list[ServiceDefinition], taken: set[int]) -> dict[str, int]:
        """For each service with an HTTP listener, its `dev_http_port`, or a free one when that is taken
        (by another process or by one of the `taken` gRPC ports)."""
        ports: dict[str, int] = {}
        for definition in definitions:
            if not definition.dev_http_port:
                continue
            port = definition.dev_http_port
            while port in taken or port in ports.values() or not port_is_free(port):
                port = free_port()
            ports[definition.name] = port
        return ports

    def register_clients(self, issuer: DevIssuer, names: list[str]) -> str:
        """Register `cityos-<name>` for every service with the development issuer; the shared secret."""
        secret = load_or_create_client_secret(self.settings.var_dir / "issuer" / CLIENT_SECRET_FILE)
        for name in names:
            issuer.register_client(f"cityos-{name}", secret)
        return secret

    def spawn(
        self,
        definition: ServiceDefinition,
        port: int,
        endpoints: dict[str, str],
        client_secret: str,
        http_port: int = 0,
    ) -> Child:
        env = {
            **os.environ,
            "CITYOS_PORT": str(port),
            "CITYOS_HOST": "127.0.0.1",
            "CITYOS_ENDPOINTS": json.dumps(endpoints),
            "CITYOS_AUTH_CLIENT_SECRET": client_secret,
        }
        if http_port:
            env[definition.http_port_variable] = str(http_port)
        child = self._start(definition.name, port, ["serve", definition.name], env)
        child.http_port = http_port
        return child

    def _start(self, name: str, port: int, arguments: list[str], env: dict[str, str]) -> Child:
        log_dir = self.settings.var_dir / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "cityos_platform.cli", *arguments],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
            )
        return Child(name, port, log_path, process)

    def start_simulator(self, issuer: DevIssuerServer) -> Child | None:
        """The device simulators of the installed services, once the city is up (seeds demo devices
        on first run and keeps them reporting)."""
        simulators = [entry.name for entry in entry_points(group=SIMULATOR_GROUP)]
        endpoints = {child.name: child.address for child in self.children}
        if not any(name in endpoints for name in simulators):
            return None
        token = issuer.issuer.mint(
            "simulator", "city-office", ["city-admin"], ttl_s=7 * 24 * 3600, client="simulator"
        )
        env = {**os.environ, "CITYOS_ENDPOINTS": json.dumps(endpoints), "CITYOS_SIMULATOR_TOKEN": token}
        return self._start("simulator", 0, ["simulate"], env)

    def wait_ready(self, child: Child) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and not self.stop_requested:
            if child.process.poll() is not None:
                return False
            if health_status(child.address) == health_pb2.HealthCheckResponse.SERVING:
                return True
            time.sleep(0.2)
        return False

    def endpoints_table(self) -> Table:
        table = Table(title="CityOS — embedded city", title_justify="left")
        table.add_column("service")
        table.add_column("endpoint")
        table.add_column("pid", justify="right")
        table.add_column("log")
        for child in self.children:
            endpoint = child.address if child.port else "(simulated devices)"
            if child.http_port:
                endpoint += f"\nhttp://127.0.0.1:{child.http_port}"
            table.add_row(child.name, endpoint, str(child.process.pid), str(child.log_path))
        return table

    def stop_all(self) -> int:
        """SIGTERM every child, wait for the grace period, kill what is left; the number killed."""
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_s + self.settings.drain_delay_s + 5
        killed = 0
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
                killed += 1
        return killed

    def start_issuer(self) -> DevIssuerServer:
        """The development issuer on its usual port (a free one when that is taken); children are told
        where it is, and `cityos token` finds its URL in var/issuer/issuer-url."""
        issuer = DevIssuer(self.settings.var_dir / "issuer")
        port = DEV_ISSUER_PORT if port_is_free(DEV_ISSUER_PORT) else 0
        server = DevIssuerServer(issuer, port=port)
        url = server.start()
        (self.settings.var_dir / "issuer" / "issuer-url").write_text(url)
        os.environ["CITYOS_AUTH_ISSUER"] = url
        return server

    def run(self) -> int:
        services = discover()
        if not services:
            self.console.print(
                "No CityOS services are installed yet, so none were started. Services register "
                "through the [bold]cityos.services[/bold] entry point (see docs/adding-a-service.md)."
            )
            return 0
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        status = 0
        issuer = self.start_issuer()
        try:
            self.console.print(f"development issuer: {issuer.issuer.issuer_url}")
            self.console.print(f"starting {len(services)} service(s): {', '.join(services)}")
            ports = self.plan_ports(list(services.values()))
            http_ports = self.plan_http_ports(list(services.values()), set(ports.values()))
            endpoints = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
            # For tools run beside the city (`cityos analytics run` calls services by these addresses).
            (self.settings.var_dir / "endpoints.json").write_text(json.dumps(endpoints, indent=2))
            secret = self.register_clients(issuer.issuer, list(services))
            self.children = [
                self.spawn(definition, ports[name], endpoints, secret, http_ports.get(name, 0))
                for name, definition in services.items()
            ]
            for child in self.children:
                if not self.wait_ready(child):
                    if self.stop_requested:
                        break
                    self.console.print(f"[red]{child.name} did not become ready; see {child.log_path}[/red]")
                    return 1
            if not self.stop_requested:
                simulator = self.start_simulator(issuer)
                if simulator is not None:
                    self.children.append(simulator)
                self.console.print(self.endpoints_table())
                token = issuer.issuer.mint("dev", "city-office", ["city-admin"], ttl_s=12 * 3600)
                self.console.print(
                    "A development token (city-admin, 12 h; `cityos token --help` mints others):"
                )
                self.console.print(f"  export CITYOS_TOKEN={token}", markup=False, soft_wrap=True)
                self.console.print("Every service answers gRPC health and reflection, e.g.:")
                first = next(child for child in self.children if child.port)
                self.console.print(
                    f'  grpcurl -plaintext -H "authorization: Bearer $CITYOS_TOKEN" {first.address} list',
                    markup=False,
                    soft_wrap=True,
                )
                self.console.print("Press Ctrl-C to stop.")
            while not self.stop_requested:
                for child in self.children:
                    code = child.process.poll()
                    if code is not None:
                        self.console.print(
                            f"[red]{child.name} exited with status {code}; "
                            f"see {child.log_path}. Stopping the city.[/red]"
                        )
                        return 1
                time.sleep(0.3)
            return status
        finally:
            if self.children:
                self.console.print("stopping…")
                killed = self.stop_all()
                self.console.print(
                    "stopped" + (f" ({killed} service(s) had to be killed)" if killed else " cleanly")
                )
            issuer.stop()
