"""The lake on S3: the same writes, reads and compaction as on a folder, against a local S3 server (moto in
server mode) through s3fs and pyarrow; bucket creation and presigned URLs through the real minio client.
Also how `Lake.from_settings` reads `CITYOS_LAKE_*`."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from minio import Minio
from pydantic import SecretStr

from cityos_platform.lake import (
    Lake,
    LakeError,
    LakeSettings,
    compact,
    read_table,
    table,
    table_files,
    write_rows,
)

DAYS = [date(2026, 7, 1), date(2026, 7, 2)]


def _minio(s3_bucket) -> Minio:
    return Minio(
        s3_bucket.endpoint.removeprefix("http://"),
        access_key=s3_bucket.access_key,
        secret_key=s3_bucket.secret_key,
        secure=False,
        region="us-east-1",
    )


def _keys(frame):
    return sorted(zip(frame["device_id"], frame["sequence"], frame["metric"], strict=True))


def test_the_s3_lake_writes_reads_and_compacts_like_a_folder(s3_bucket, tmp_path, telemetry):
    lake = Lake.from_settings(s3_bucket.lake_settings("city/lake"), tmp_path)
    assert lake.is_s3
    assert lake.root == f"{s3_bucket.bucket}/city/lake"
    lake.ensure_bucket()  # already there: nothing to do
    spec = table("device_telemetry")
    written = []
    expected = []
    for n in range(4):
        day = DAYS[n % 2]
        rows = telemetry(day, 1_500, seed=n)
        written += write_rows(lake, spec, rows, f"src-{n}")
        expected += _keys(rows.to_pandas())

    # The objects are in the bucket, as an independent client (minio) lists them.
    objects = sorted(
        o.object_name for o in _minio(s3_bucket).list_objects(s3_bucket.bucket, "city/lake/", recursive=True)
    )
    assert objects == sorted(p.removeprefix(f"{s3_bucket.bucket}/") for p in written)
    assert lake.list_files(lake.path(spec.name)) == sorted(written)

    frame = read_table(spec.name, lake=lake).compute()
    assert _keys(frame) == sorted(expected)
    start = datetime(2026, 7, 2, tzinfo=UTC)
    one_day = read_table(
        spec.name, start, start + timedelta(days=1), ["device_id", "value"], lake=lake
    ).compute()
    assert list(one_day.columns) == ["device_id", "value"]
    assert len(one_day) == 3_000
    assert table_files(spec.name, start, start + timedelta(days=1), lake) == [
        p for p in sorted(written) if "dt=2026-07-02" in p
    ]
    filtered = read_table(
        spec.name, columns=["metric"], filters=[("metric", "==", "tilt_deg")], lake=lake
    ).compute()
    assert len(filtered) == sum(1 for _, _, m in expected if m == "tilt_deg")

    (output,) = compact(lake, spec, DAYS[0])
    assert lake.list_files(lake.path(spec.name, "dt=2026-07-01")) == [output]
    assert lake.exists(lake.path(spec.name, "dt=2026-07-01", "_compaction.json"))
    assert _keys(read_table(spec.name, lake=lake).compute()) == sorted(expected)


def test_the_bucket_is_created_and_a_file_shared_by_presigned_url(moto_s3, tmp_path, telemetry):
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    settings = LakeSettings(
        url=f"s3://{bucket}",
        s3_endpoint=moto_s3.endpoint,
        s3_access_key=SecretStr("cityos-test"),
        s3_secret_key=SecretStr("cityos-test-secret"),
    )
    lake = Lake.from_settings(settings, tmp_path)
    client = lake.minio()
    assert not client.bucket_exists(bucket)
    lake.ensure_bucket()
    assert client.bucket_exists(bucket)
    lake.ensure_bucket()  # idempotent

    (path,) = write_rows(lake, table("device_telemetry"), telemetry(DAYS[0], 800), "shared")
    url = lake.presigned_get(path, timedelta(minutes=5))
    assert url.startswith(
        f"{moto_s3.endpoint}/{bucket}/device_telemetry/dt%3D2026-07-01/part-shared.parquet?"
    )
    assert "X-Amz-Expires=300" in url
    assert "X-Amz-Signature=" in url
    downloaded = httpx.get(url)
    assert downloaded.status_code == 200
    assert (
        downloaded.content == lake.read_bytes(path) == client.get_object(bucket, path.split("/", 1)[1]).read()
    )
    assert httpx.get(url.split("?")[0]).status_code == 403  # without the signature: refused
    lake.delete(path)
    assert not lake.exists(path)
    assert lake.list_files(lake.root) == []
    lake.delete(path)  # deleting what is gone is not an error


def test_settings_name_the_lake(tmp_path):
    default = Lake.from_settings(LakeSettings(), tmp_path / "var")
    assert default.root == str((tmp_path / "var" / "lake").resolve())
    assert not default.is_s3
    folder = Lake.from_settings(LakeSettings(url=f"file://{tmp_path}/elsewhere"), tmp_path)
    assert folder.root == str(tmp_path / "elsewhere")
    folder.ensure_bucket()
    assert (tmp_path / "elsewhere").is_dir()
    assert (
        folder.presigned_get(folder.path("a.parquet"), timedelta(minutes=1))
        == (tmp_path / "elsewhere" / "a.parquet").as_uri()
    )
    for bad in ("s3:///prefix", "ftp://host/x", "file://relative/path"):
        with pytest.raises(LakeError, match="CITYOS_LAKE_URL"):
            Lake.from_settings(LakeSettings(url=bad), tmp_path)
    with pytest.raises(LakeError, match="needs an S3 lake"):
        folder.minio()
    # An https endpoint gives a secure minio client: its presigned URLs (signed locally) say so.
    remote = Lake.from_settings(
        LakeSettings(
            url="s3://city-lake/tables",
            s3_endpoint="https://minio.example:9443",
            s3_access_key=SecretStr("k"),
            s3_secret_key=SecretStr("s"),
        ),
        tmp_path,
    )
    assert remote.root == "city-lake/tables"
    assert remote.bucket == "city-lake"
    assert remote.presigned_get("city-lake/tables/x.parquet", timedelta(hours=1)).startswith(
        "https://minio.example:9443/city-lake/tables/x.parquet?"
    )
    with pytest.raises(LakeError, match="CITYOS_LAKE_S3_ENDPOINT"):
        Lake.from_settings(LakeSettings(url="s3://b-1/x", s3_endpoint="minio:9000"), tmp_path).minio()


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CITYOS_LAKE_URL", f"file://{tmp_path}/env-lake")
    monkeypatch.setenv("CITYOS_LAKE_S3_SECRET_KEY", "hidden")
    settings = LakeSettings()
    assert settings.url == f"file://{tmp_path}/env-lake"
    assert "hidden" not in repr(settings)
    assert Path(Lake.from_settings(settings, tmp_path).root) == tmp_path / "env-lake"


@pytest.mark.slow
def test_while_the_endpoint_is_down_writes_fail_and_afterwards_succeed(private_moto_s3, tmp_path, telemetry):
    bucket = private_moto_s3.create_bucket()
    settings = LakeSettings(
        url=f"s3://{bucket}/lake",
        s3_endpoint=private_moto_s3.endpoint,
        s3_access_key=SecretStr("cityos-test"),
        s3_secret_key=SecretStr("cityos-test-secret"),
    )
    lake = Lake.from_settings(settings, tmp_path)
    spec = table("device_telemetry")
    write_rows(lake, spec, telemetry(DAYS[0], 300, seed=1), "before")

    private_moto_s3.stop()
    with pytest.raises(Exception, match="Could not connect"):
        write_rows(lake, spec, telemetry(DAYS[0], 300, seed=2), "during")
    private_moto_s3.start()  # same port, same contents

    write_rows(lake, spec, telemetry(DAYS[0], 300, seed=2), "during")  # the caller's retry
    assert [Path(p).name for p in lake.list_files(lake.root)] == [
        "part-before.parquet",
        "part-during.parquet",
    ]
    assert len(read_table(spec.name, lake=lake).compute()) == 600
