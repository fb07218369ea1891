"""Fixtures for the lake's tests: the local S3 server (moto), generated telemetry, and a local lake whose
filesystem records what is listed, opened and read (to prove what a query touches)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

from cityos_platform.lake import Lake

METRICS = ("tilt_deg", "water_level_cm", "battery_pct", "temperature_c")


def make_telemetry(day: date, rows: int, seed: int = 0, devices: int = 300) -> pa.Table:
    """`rows` long-shape telemetry rows spread evenly over the UTC day `day`, in time order."""
    rng = random.Random(seed)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    step = 86_400 / rows
    times = [start + timedelta(seconds=i * step) for i in range(rows)]
    return pa.table(
        {
            "device_id": [f"mh-{rng.randrange(devices):04d}" for _ in range(rows)],
            "device_type": ["manhole.terminal"] * rows,
            "owner_organization": [rng.choice(("utilities", "water")) for _ in range(rows)],
            "area_cell": [f"89283082{rng.randrange(64):03d}ffff" for _ in range(rows)],
            "sequence": list(range(seed * rows, seed * rows + rows)),
            "metric": [rng.choice(METRICS) for _ in range(rows)],
            "value": [rng.uniform(-50, 150) for _ in range(rows)],
            "time": times,
            "received_time": [t + timedelta(milliseconds=rng.randrange(50, 5000)) for t in times],
        }
    )


@pytest.fixture
def telemetry():
    """`telemetry(day, rows, seed=0)`: generated device_telemetry rows of one day."""
    return make_telemetry


class CountingOpener(LocalFileOpener):
    """A local file that records every read as (path, offset, length)."""

    def read(self, *args, **kwargs):
        offset = self.tell()
        data = super().read(*args, **kwargs)
        self.fs.reads.append((self.path, offset, len(data)))
        return data

    def readinto(self, buffer):
        offset = self.tell()
        count = self.f.readinto(buffer)
        self.fs.reads.append((self.path, offset, count or 0))
        return count


class CountingFS(LocalFileSystem):
    """The local filesystem, recording the folders listed, the files opened and the bytes read."""

    def __init__(self):
        super().__init__(skip_instance_cache=True)
        self.reset()

    def reset(self):
        self.listed: list[str] = []
        self.opened: list[str] = []
        self.reads: list[tuple[str, int, int]] = []

    def ls(self, path, detail=False, **kwargs):
        self.listed.append(self._strip_protocol(path))
        return super().ls(path, detail=detail, **kwargs)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        path = self._strip_protocol(path)
        if "r" not in mode:
            return super()._open(path, mode=mode, block_size=block_size, **kwargs)
        self.opened.append(path)
        return CountingOpener(path, mode, fs=self, **kwargs)

    def bytes_read(self, path=None):
        return sum(length for p, _, length in self.reads if path is None or p == path)


@pytest.fixture
def counting_lake(tmp_path):
    """A local lake in tmp_path whose `fs` is a CountingFS."""
    fs = CountingFS()
    return Lake(str(tmp_path / "lake"), fs), fs
