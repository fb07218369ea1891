"""pytest fixtures: a local S3-compatible server (moto in server mode) for the lake's S3 path.

`moto_s3` is one `ThreadedMotoServer` on 127.0.0.1 and an ephemeral port for the whole run; `s3_bucket`
gives each test a fresh bucket on it (created through the minio SDK, as the product creates its own),
as `S3Bucket(endpoint, access_key, secret_key, bucket)` — a tuple, with `lake_settings()` for a
`LakeSettings` that points the lake at it. A test that takes the endpoint down and brings it back (the
exporter while S3 is unreachable) uses `private_moto_s3`, a server of its own it may `stop()` and
`start()` again on the same port; moto keeps the buckets' contents in the process, so they survive.

Tests only: the product never imports moto (a dev dependency). Loaded by the root conftest.py
(`pytest_plugins`), or by importing the fixtures into a test folder's conftest.py.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

    from cityos_platform.lake.location import LakeSettings

ACCESS_KEY = "cityos-test"
SECRET_KEY = "cityos-test-secret"  # noqa: S105 - moto accepts any key; this one is only for tests
REGION = "us-east-1"


class MotoS3:
    """A moto S3 server in a thread on 127.0.0.1: `start()`, `stop()`, `start()` again on the same port."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self._server is not None:
            return
        if self.port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server

    def stop(self) -> None:
        """Stop answering (connections are refused until `start()`); the buckets are kept."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def create_bucket(self, name: str | None = None) -> str:
        """A new, empty bucket (made through the minio SDK); returns its name."""
        from minio import Minio

        bucket = name or f"lake-{uuid.uuid4().hex[:16]}"
        client = Minio(
            f"127.0.0.1:{self.port}",
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            secure=False,
            region=REGION,
        )
        client.make_bucket(bucket, location=REGION)
        return bucket


class S3Bucket(NamedTuple):
    """A fresh bucket on the test S3 server and the credentials to reach it."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str

    def lake_settings(self, prefix: str = "lake") -> LakeSettings:
        """Settings for a lake at `s3://<bucket>/<prefix>` on this server."""
        from pydantic import SecretStr

        from cityos_platform.lake.location import LakeSettings

        return LakeSettings(
            url=f"s3://{self.bucket}/{prefix}".rstrip("/"),
            s3_endpoint=self.endpoint,
            s3_access_key=SecretStr(self.access_key),
            s3_secret_key=SecretStr(self.secret_key),
            s3_region=REGION,
        )

    def env(self, prefix: str = "lake") -> dict[str, str]:
        """The same as `CITYOS_LAKE_*` environment variables (for a subprocess)."""
        return {
            "CITYOS_LAKE_URL": f"s3://{self.bucket}/{prefix}".rstrip("/"),
            "CITYOS_LAKE_S3_ENDPOINT": self.endpoint,
            "CITYOS_LAKE_S3_ACCESS_KEY": self.access_key,
            "CITYOS_LAKE_S3_SECRET_KEY": self.secret_key,
            "CITYOS_LAKE_S3_REGION": REGION,
        }


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """The run's shared S3 server (do not stop it: use `private_moto_s3` for that)."""
    server = MotoS3()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> S3Bucket:
    """A fresh, empty bucket on the shared S3 server: (endpoint, access key, secret key, bucket)."""
    return S3Bucket(moto_s3.endpoint, ACCESS_KEY, SECRET_KEY, moto_s3.create_bucket())


@pytest.fixture
def private_moto_s3() -> Iterator[MotoS3]:
    """An S3 server of this test's own, which the test may stop and start again (same port)."""
    server = MotoS3()
    server.start()
    yield server
    server.stop()
