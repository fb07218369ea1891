"""CityOS analytics: named jobs over the lake on Dask and Ray (`cityos analytics run <job>`).

- `jobs`: the jobs (`JOBS`), each declaring its input tables, its output tables and its engine;
- `runner.run_job`: opens the engine, runs a job over a window, writes its outputs and report, publishes;
- `engines.Engines`: local or remote Dask and Ray;
- `kube`: the KubeRay RayJob that runs a job on Kubernetes (`--kubernetes`);
- `cli`: the `cityos analytics` commands.

docs/analytics.md is the guide.
"""
