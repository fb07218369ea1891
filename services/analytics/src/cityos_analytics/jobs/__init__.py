"""The analytics jobs, by name (`cityos analytics run <name>`; see `base.Job`)."""

from __future__ import annotations

from cityos_analytics.jobs.base import Job, JobContext, JobOutput
from cityos_analytics.jobs.device_anomalies import DeviceAnomalies
from cityos_analytics.jobs.manhole_risk import ManholeRisk
from cityos_analytics.jobs.parking_forecast import ParkingForecast
from cityos_analytics.jobs.streetlight_report import StreetlightReport

JOBS: dict[str, type[Job]] = {
    job.name: job for job in (ParkingForecast, StreetlightReport, ManholeRisk, DeviceAnomalies)
}


def job_named(name: str) -> Job:
    """A new instance of job `name`, or KeyError listing the jobs."""
    try:
        return JOBS[name]()
    except KeyError:
        raise KeyError(f"no analytics job {name!r}; jobs: {', '.join(sorted(JOBS))}") from None


__all__ = ["JOBS", "Job", "JobContext", "JobOutput", "job_named"]
