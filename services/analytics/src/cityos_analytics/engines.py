"""The engines a job runs on: Dask and Ray, local or remote, opened by the runner and never by a job.

- Dask: `dask_scheduler=None` starts a `distributed.LocalCluster` of worker processes (one thread each,
  as many as `workers` or the machine's cores) for the run; `tcp://host:8786` connects a `Client` to a
  running scheduler. Either way the client becomes the default scheduler, so a job's `.compute()` runs
  there.
- Ray: `ray_address=None` starts a local Ray (`ray.init(num_cpus=workers)`); `ray://host:10001`
  connects through Ray Client, `auto` or `host:6379` joins the cluster this process runs in (a RayJob's
  entrypoint on the head pod). Ray 2.59 and later enable token authentication on local clusters: a
  remote cluster started with `RAY_AUTH_MODE=token` needs the same `RAY_AUTH_MODE` and `RAY_AUTH_TOKEN`
  (or `RAY_AUTH_TOKEN_PATH`) in the environment of the process that connects.

A remote cluster must have the job's code installed (the CityOS image, `cityos-analytics`) and reach the
lake at the same URL (`CITYOS_LAKE_URL`: S3, or a folder every node mounts at the same path).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass
class Engines:
    """Where a run computes: `dask_scheduler` and `ray_address` (None: local), and local sizes."""

    dask_scheduler: str | None = None
    ray_address: str | None = None
    workers: int = field(default_factory=default_workers)
    #: Seconds the last engine took to start or connect (the bench reports it).
    start_seconds: float = 0.0
    dask_client: Client | None = None

    @contextmanager
    def dask(self) -> Iterator[Client]:
        """A Dask client for the run: a LocalCluster of processes, or the scheduler at the address."""
        from distributed import Client, LocalCluster

        started = time.perf_counter()
        if self.dask_scheduler:
            with Client(self.dask_scheduler, timeout="30s") as client:  # type: ignore[no-untyped-call]
                self.start_seconds = time.perf_counter() - started
                self.dask_client = client
                log.info("connected to the Dask scheduler %s", self.dask_scheduler)
                try:
                    yield client
                finally:
                    self.dask_client = None
            return
        with (
            LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                # No dashboard; the scheduler's HTTP endpoint still starts, on a free port (the
                # default 8787 may be taken, e.g. by another cluster on the machine).
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.WARNING,
            ) as cluster,
            Client(cluster) as client,  # type: ignore[no-untyped-call]
        ):
            self.start_seconds = time.perf_counter() - started
            self.dask_client = client
            log.info("started a local Dask cluster of %d worker processes", self.workers)
            try:
                yield client
            finally:
                self.dask_client = None

    @contextmanager
    def ray(self) -> Iterator[None]:
        """Ray for the run: connected to the address, or a local Ray; shut down afterwards unless this
        process was already connected."""
        import ray

        if ray.is_initialized():  # a session (a notebook, the tests) already connected: use it
            yield
            return
        started = time.perf_counter()
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.ray_address:
            ray.init(address=self.ray_address, **options)
            log.info("connected to Ray at %s", self.ray_address)
        else:
            ray.init(num_cpus=self.workers, include_dashboard=False, **options)
            log.info("started a local Ray with %d CPUs", self.workers)
        self.start_seconds = time.perf_counter() - started
        try:
            yield
        finally:
            ray.shutdown()
