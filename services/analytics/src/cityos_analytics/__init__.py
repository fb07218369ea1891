"""CityOS analytics: named jobs over the lake on Dask and Ray (`cityos analytics run <job>`).

- `jobs`: the jobs (`JOBS`), each declaring its input tables, its output tables and its engine;
- `runner.run_job`: opens the engine, runs a job over a window, writes its outputs and report, publishes;
- `engines.Engines`: local or remote Dask and Ray;
- `kube`: the KubeRay RayJob that runs a job on Kubernetes (`--kubernetes`);
- `cli`: the `cityos analytics` commands.

docs/analytics.md is the guide.
"""

import os

# Ray (2.43+) starts its workers with `uv run` when the driver was started by `uv run` (as `make test`
# and `make bench` do), re-resolving the project from the worker's directory: here that found no Ray
# and every worker died at `import ray`. The workers share this interpreter's environment anyway. Must
# be set before Ray is imported; an explicit RAY_ENABLE_UV_RUN_RUNTIME_ENV=1 wins.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
