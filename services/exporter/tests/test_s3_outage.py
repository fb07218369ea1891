"""LAK-2: while the S3 endpoint is down the exporter keeps spooling, and after it returns everything
arrives with matching row counts; the S3 path runs against a local S3 server (moto in server mode)
through the real minio client (the exporter creates its bucket with it) and pyarrow.

A real devices service produces readings and events the whole time. The exporter (in-process, its real
followers, spool and flusher) writes to `s3://<bucket>/lake` on a moto server of the test's own, which
the test stops (connections refused) and starts again on the same port. While it is down the spool
grows up to CITYOS_EXPORTER_MAX_SPOOL_ROWS and then the followers stop reading (backpressure, not
loss); nothing crashes. Afterwards the lake, read back with pyarrow's own S3 filesystem (not the
exporter's s3fs), holds exactly the rows the devices service holds.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from minio import Minio

from cityos_exporter.app import ExporterApp
from cityos_exporter.settings import ExporterSettings
from cityos_platform.config import load_settings
from cityos_platform.testing.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Bucket

MAX_SPOOL_ROWS = 300
MAX_BATCH = 20  # records per response: bounds how far past MAX_SPOOL_ROWS one batch can take the spool
ROWS_PER_RECORD = 6  # a manhole terminal's reading: 3 metrics, in device_telemetry and manhole_readings


def _s3_rows(endpoint: str, bucket: str, table: str, columns: list[str]) -> pa.Table:
    """Every row of `table`'s data files in the bucket, with pyarrow's S3 filesystem alone."""
    fs = pafs.S3FileSystem(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        endpoint_override=endpoint,
        scheme="http",
        region=REGION,
    )
    selector = pafs.FileSelector(f"{bucket}/lake/{table}", recursive=True, allow_not_found=True)
    paths = sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.path.endswith(".parquet") and not info.base_name.startswith((".", "_"))
    )
    parts = [pq.read_table(path, columns=columns, filesystem=fs) for path in paths]
    return (
        pa.concat_tables(parts) if parts else pa.table({name: pa.array([], pa.string()) for name in columns})
    )


async def _until(condition, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await asyncio.to_thread(condition):
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.req("LAK-2")
async def test_while_s3_is_down_the_exporter_spools_and_afterwards_everything_arrives_once(
    fleet, producer, source, client_secret, dev_issuer, private_moto_s3, tmp_path
):
    bucket = S3Bucket(private_moto_s3.endpoint, ACCESS_KEY, SECRET_KEY, "cityos-lake-lak2")
    app = ExporterApp(
        load_settings(
            var_dir=tmp_path / "exporter",
            endpoints={"devices": fleet.server.address},
            auth_issuer=dev_issuer.issuer_url,
            auth_client_secret=client_secret,
        ),
        exporter_settings=ExporterSettings(
            flush_interval_s=0.3,
            retry_s=0.1,
            max_flush_backoff_s=0.5,
            max_batch=MAX_BATCH,
            max_spool_rows=MAX_SPOOL_ROWS,
        ),
        lake_settings=bucket.lake_settings(),
    )
    await producer.start()
    await app.start()
    try:
        await asyncio.wait_for(app.leading.wait(), 10)
        spool, flusher = app.spool, app.flusher
        assert spool is not None
        assert flusher is not None
        minio = Minio(
            f"127.0.0.1:{private_moto_s3.port}", ACCESS_KEY, SECRET_KEY, secure=False, region=REGION
        )

        def telemetry_in_lake() -> int:
            return _s3_rows(bucket.endpoint, bucket.bucket, "device_telemetry", ["device_id"]).num_rows

        await _until(lambda: telemetry_in_lake() > 0, 20, "first rows in S3")
        assert minio.bucket_exists(bucket.bucket), "the exporter created its bucket through the minio SDK"

        private_moto_s3.stop()  # the endpoint is down: connections refused
        failures, spooled_before = flusher.failures, sum(follower.rows for follower in app.followers)
        peak = 0

        def full() -> bool:
            nonlocal peak
            peak = max(peak, spool.rows)
            return any(follower.waiting_for_room for follower in app.followers)

        await _until(full, 30, "the spool reaching CITYOS_EXPORTER_MAX_SPOOL_ROWS")
        await _until(lambda: flusher.failures > failures, 60, "a flush failing (S3 down)")
        await asyncio.sleep(1.0)  # readings keep coming; the followers hold
        full()
        assert sum(follower.rows for follower in app.followers) - spooled_before >= MAX_SPOOL_ROWS / 2
        assert MAX_SPOOL_ROWS <= peak <= MAX_SPOOL_ROWS + 2 * MAX_BATCH * ROWS_PER_RECORD, peak
        assert all(
            task is not None and not task.done()
            for task in [flusher._task, *(f._task for f in app.followers)]
        )

        private_moto_s3.start()  # back, on the same port, with what it held
        await asyncio.sleep(1.0)
        await producer.stop()
        readings, events = await source.readings(), await source.events()
        expected = Counter(record.type for record in readings for _ in record.reading.values)
        telemetry_rows = sum(expected.values())
        await _until(
            lambda: telemetry_in_lake() == telemetry_rows and spool.rows == 0, 60, "the lake catching up"
        )
        assert flusher.reachable
    finally:
        await app.stop()

    telemetry = _s3_rows(
        bucket.endpoint, bucket.bucket, "device_telemetry", ["device_id", "sequence", "metric"]
    )
    keys = list(zip(*(telemetry.column(name).to_pylist() for name in telemetry.column_names), strict=True))
    assert len(keys) == len(set(keys)) == telemetry_rows
    assert set(keys) == {
        (record.device.removeprefix("devices/"), record.reading.sequence, metric)
        for record in readings
        for metric in record.reading.values
    }
    manholes = _s3_rows(bucket.endpoint, bucket.bucket, "manhole_readings", ["device_id"])
    assert manholes.num_rows == expected["manhole.terminal"] > 0
    device_events = _s3_rows(bucket.endpoint, bucket.bucket, "device_events", ["event_id"]).column("event_id")
    assert sorted(device_events.to_pylist()) == sorted(event.id for event in events)
