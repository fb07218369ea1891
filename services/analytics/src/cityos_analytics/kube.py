"""Running a job on Kubernetes: a KubeRay `RayJob` created with the `kubernetes` client.

`cityos analytics run <job> --kubernetes` (from a laptop with a kubeconfig, or from the analytics runner
inside the cluster under its own service account) builds a `ray.io/v1` RayJob (`rayjob_manifest`) and
creates it (`submit`). The KubeRay operator then starts a Ray cluster from the CityOS image, runs the
entrypoint `cityos analytics run <job> --start … --end … --ray-address auto` on it — the same command
and the same code as on a laptop, joined to the cluster it runs in — and tears the cluster down when the
job ends (`shutdownAfterJobFinishes`, kept `ttlSecondsAfterFinished` for its logs). A Dask job runs the
same way, on a Dask LocalCluster inside the Ray head pod (or on the Dask scheduler `--dask-scheduler`
names).

The pods get their settings (`CITYOS_LAKE_*` and S3 credentials, `CITYOS_ENDPOINTS`, the analytics
client's secret, the issuer) from the ConfigMap and Secret `env_from` names (the chart provides them),
run as a non-root user with no privilege escalation, no capabilities and the runtime's seccomp profile,
and write only to their `/tmp/ray` and `/dev/shm` volumes. Ray's token authentication is on
(`authOptions.mode: token`: KubeRay ≥ 1.5.1 creates the token Secret and sets it on every Ray
container).

`submit` loads the in-cluster configuration when it runs in a pod (the service account's token), else
the kubeconfig. Creating RayJobs needs RBAC `create`/`get` on `rayjobs.ray.io` in the namespace.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GROUP, VERSION, PLURAL, KIND = "ray.io", "v1", "rayjobs", "RayJob"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: KubeRay derives the cluster's and its pods' names from the RayJob's: keep it short.
MAX_NAME = 47
FINISHED = {"SUCCEEDED", "FAILED", "STOPPED"}


def _ray_version() -> str:
    from importlib.metadata import version

    return version("ray")


@dataclass
class KubeOptions:
    """Where and how the RayJob runs; the defaults match the chart's names."""

    namespace: str = "cityos"
    image: str = "ghcr.io/cityos/cityos:0.1.0"
    service_account: str = "cityos-analytics"
    #: ConfigMaps and Secrets whose keys become the pods' environment (CITYOS_*).
    env_from_config_maps: tuple[str, ...] = ("cityos-analytics",)
    env_from_secrets: tuple[str, ...] = ("cityos-analytics",)
    workers: int = 2
    worker_max: int = 4
    head_cpu: str = "1"
    head_memory: str = "4Gi"
    worker_cpu: str = "2"
    worker_memory: str = "4Gi"
    active_deadline_s: int = 3600
    ttl_after_finished_s: int = 3600
    ray_version: str = field(default_factory=_ray_version)
    #: Extra arguments of the entrypoint's `cityos analytics run` (e.g. a Dask scheduler address).
    extra_args: tuple[str, ...] = ()


def rayjob_name(job: str, start: datetime, end: datetime) -> str:
    """`cityos-<job>-<8 hex of the window>`, a DNS label of at most MAX_NAME characters."""
    digest = hashlib.sha256(f"{job}/{start.isoformat()}/{end.isoformat()}".encode()).hexdigest()[:8]
    stem = f"cityos-{job}"[: MAX_NAME - 9].rstrip("-")
    return f"{stem}-{digest}"


def entrypoint(job: str, start: datetime, end: datetime, extra: tuple[str, ...] = ()) -> str:
    """The command the RayJob runs on its cluster: the CLI, joined to that cluster."""
    args = [
        "cityos",
        "analytics",
        "run",
        job,
        "--start",
        start.isoformat(),
        "--end",
        end.isoformat(),
        "--ray-address",
        "auto",
        "--no-progress",
        *extra,
    ]
    return shlex.join(args)


def _container(
    name: str, options: KubeOptions, cpu: str, memory: str, ports: list[dict[str, Any]]
) -> dict[str, Any]:
    env_from = [{"configMapRef": {"name": n, "optional": True}} for n in options.env_from_config_maps] + [
        {"secretRef": {"name": n, "optional": True}} for n in options.env_from_secrets
    ]
    container: dict[str, Any] = {
        "name": name,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "envFrom": env_from,
        "env": [{"name": "RAY_DISABLE_USAGE_STATS", "value": "1"}],
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu, "memory": memory},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
        "volumeMounts": [
            {"name": "ray-tmp", "mountPath": "/tmp/ray"},  # noqa: S108 - a pod volume, not a host path
            {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108 - the object store's memory volume
        ],
    }
    if ports:
        container["ports"] = ports
    return container


def _pod_template(container: dict[str, Any], options: KubeOptions, role: str, job: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": _labels(job) | {"app.kubernetes.io/component": f"analytics-{role}"}},
        "spec": {
            "serviceAccountName": options.service_account,
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {"name": "ray-tmp", "emptyDir": {}},
                {"name": "shm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }


def _labels(job: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "cityos",
        "app.kubernetes.io/component": "analytics",
        "app.kubernetes.io/managed-by": "cityos-analytics",
        "cityos.io/analytics-job": job,
    }


def rayjob_manifest(
    job: str, start: datetime, end: datetime, options: KubeOptions | None = None
) -> dict[str, Any]:
    """The RayJob that runs `job` over [start, end) (see the module doc)."""
    options = options or KubeOptions()
    head = _container(
        "ray-head",
        options,
        options.head_cpu,
        options.head_memory,
        [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ],
    )
    worker = _container("ray-worker", options, options.worker_cpu, options.worker_memory, [])
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": rayjob_name(job, start, end),
            "namespace": options.namespace,
            "labels": _labels(job),
            "annotations": {"cityos.io/window": f"{start.isoformat()}/{end.isoformat()}"},
        },
        "spec": {
            "entrypoint": entrypoint(job, start, end, options.extra_args),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": options.ttl_after_finished_s,
            "activeDeadlineSeconds": options.active_deadline_s,
            "backoffLimit": 0,
            "rayClusterSpec": {
                "rayVersion": options.ray_version,
                "authOptions": {"mode": "token"},
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0"},  # the head schedules; the workers compute
                    "template": _pod_template(head, options, "head", job),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "workers",
                        "replicas": options.workers,
                        "minReplicas": options.workers,
                        "maxReplicas": max(options.worker_max, options.workers),
                        "rayStartParams": {},
                        "template": _pod_template(worker, options, "worker", job),
                    }
                ],
            },
        },
    }


def _api(api_client: ApiClient | None) -> Any:
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]  # a pod: its service account
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client)


def submit(manifest: dict[str, Any], *, api_client: ApiClient | None = None) -> dict[str, Any]:
    """Create the RayJob; returns the object the API server stored."""
    api = _api(api_client)
    created: dict[str, Any] = api.create_namespaced_custom_object(
        GROUP, VERSION, manifest["metadata"]["namespace"], PLURAL, manifest
    )
    return created


def wait(
    name: str,
    namespace: str,
    *,
    timeout_s: float = 3600,
    poll_s: float = 5,
    api_client: ApiClient | None = None,
    on_status: Any = None,
) -> str:
    """Poll the RayJob until its `status.jobStatus` is SUCCEEDED, FAILED or STOPPED (or the timeout:
    TimeoutError); returns that status."""
    api = _api(api_client)
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        found = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = str((found.get("status") or {}).get("jobStatus") or "")
        if status != last and on_status is not None:
            on_status(status or "PENDING")
        last = status
        if status in FINISHED:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"RayJob {namespace}/{name} still {status or 'PENDING'} after {timeout_s:.0f} s"
            )
        time.sleep(poll_s)
