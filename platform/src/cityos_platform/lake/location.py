"""Where the lake lives — a local folder or an S3 bucket — behind one fsspec filesystem.

`LakeSettings` (`CITYOS_LAKE_*`) names the lake: `url` empty means `<var_dir>/lake` (the embedded
default), `file:///abs/path` a folder, `s3://bucket/prefix` a bucket (MinIO in production, with
`s3_endpoint` and keys; AWS when the endpoint is empty). `Lake.from_settings` turns that into a `Lake`:
its `root` ("/abs/path" or "bucket/prefix") and its `fs`, a `fsspec` LocalFileSystem or
`s3fs.S3FileSystem`. Everything else — writing, listing, reading with pyarrow and Dask — goes through
`fs`, so the local and S3 lakes share one code path; only bucket setup and presigned URLs use the
`minio` SDK (S3 has no equivalent in fsspec).

Atomic writes (`write_parquet_atomic`): a reader never sees a partial file. Locally the file is written
under a hidden temporary name in its final folder (`.<name>.<random>.tmp`), fsynced, renamed over the
final name (atomic on POSIX) and the folder fsynced. On S3 an object becomes visible only once its
upload completes (a single PUT, or a multipart upload's completion), so it is written in place; an
interrupted multipart upload leaves nothing visible (a bucket lifecycle rule removes its parts).
`list_files` lists data files only: names starting with `.` or `_` (temporaries, manifests) are never
data.

The S3 filesystem keeps no listing cache (`use_listings_cache=False`): a reader in a long-lived process
must see the files another process wrote a moment ago.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import pyarrow as pa
    from minio import Minio

DATA_SUFFIX = ".parquet"


class LakeSettings(BaseSettings):
    """The lake's location and S3 credentials (`CITYOS_LAKE_*`)."""

    model_config = SettingsConfigDict(env_prefix="CITYOS_LAKE_", extra="ignore", frozen=True)

    # "" -> file://<var_dir>/lake; "file:///abs/path"; "s3://bucket/prefix".
    url: str = ""
    # The S3 endpoint, e.g. "http://127.0.0.1:9000" (MinIO); "" -> AWS's default for the region.
    s3_endpoint: str = ""
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_region: str = "us-east-1"


class LakeError(Exception):
    """The lake's location is invalid."""


def is_data_file(path: str) -> bool:
    """A data file: a `.parquet` whose name does not start with `.` or `_` (temporaries, manifests)."""
    name = posixpath.basename(path.rstrip("/"))
    return name.endswith(DATA_SUFFIX) and not name.startswith((".", "_"))


class Lake:
    """A lake: a root under a filesystem (local or S3), and the few operations the lake needs."""

    def __init__(
        self,
        root: str,
        fs: fsspec.AbstractFileSystem,
        *,
        s3: LakeSettings | None = None,
    ) -> None:
        self.root = root.rstrip("/") or "/"
        self.fs = fs
        self._local = isinstance(fs, LocalFileSystem)
        self._s3 = s3
        self._minio: Minio | None = None

    def __repr__(self) -> str:
        return f"Lake({self.url!r})"

    @classmethod
    def from_settings(cls, lake: LakeSettings, var_dir: Path) -> Lake:
        """The lake that `lake` names (`url` empty: `<var_dir>/lake`)."""
        url = lake.url.strip()
        if not url:
            return cls.local(var_dir / "lake")
        parts = urlsplit(url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise LakeError(f"CITYOS_LAKE_URL: {url!r} is not file:///absolute/path")
            return cls.local(Path(parts.path))
        if parts.scheme in ("s3", "s3a"):
            bucket, prefix = parts.netloc, parts.path.strip("/")
            if not bucket:
                raise LakeError(f"CITYOS_LAKE_URL: {url!r} names no bucket (s3://bucket/prefix)")
            return cls.s3(bucket, prefix, lake)
        raise LakeError(f"CITYOS_LAKE_URL: {url!r} is neither file:///path nor s3://bucket/prefix")

    @classmethod
    def local(cls, folder: Path) -> Lake:
        """A lake in a local folder (created on first write, or by `ensure_bucket`)."""
        return cls(str(folder.resolve()), LocalFileSystem())

    @classmethod
    def s3(cls, bucket: str, prefix: str, settings: LakeSettings) -> Lake:
        """A lake under `s3://bucket/prefix` with the endpoint and keys of `settings`."""
        import s3fs

        options: dict[str, Any] = {
            "use_listings_cache": False,
            "skip_instance_cache": True,
            # No read-ahead: pyarrow asks for exactly the byte ranges it needs (and coalesces them).
            "default_cache_type": "none",
            "client_kwargs": {"region_name": settings.s3_region},
            # Fail fast while the endpoint is away (the caller retries), patiently once it answers.
            "config_kwargs": {"connect_timeout": 5, "read_timeout": 60},
        }
        if settings.s3_endpoint:
            options["endpoint_url"] = settings.s3_endpoint
        key, secret = settings.s3_access_key.get_secret_value(), settings.s3_secret_key.get_secret_value()
        if key:
            options.update(key=key, secret=secret)
        fs = s3fs.S3FileSystem(**options)
        return cls(posixpath.join(bucket, prefix) if prefix else bucket, fs, s3=settings)

    # -- where things are ------------------------------------------------------------------------

    @property
    def is_s3(self) -> bool:
        """Whether the lake is remote (S3): anything but a local filesystem."""
        return not self._local

    @property
    def bucket(self) -> str:
        """The bucket (S3) — the root's first segment."""
        return self.root.split("/", 1)[0]

    @property
    def url(self) -> str:
        return f"s3://{self.root}" if self.is_s3 else f"file://{self.root}"

    def path(self, *parts: str) -> str:
        """`parts` joined under the root."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def _strip(self, path: str) -> str:
        """A path as `fs` returns it, without a protocol, so it compares with `root`."""
        stripped: str = self.fs._strip_protocol(path)
        return stripped

    # -- setup and sharing (minio SDK on S3) -----------------------------------------------------

    def minio(self) -> Minio:
        """The minio client for this lake's endpoint (S3 only)."""
        if self._s3 is None:
            raise LakeError(f"the minio client needs an S3 lake made from LakeSettings; {self!r} is not")
        if self._minio is None:
            from minio import Minio

            endpoint = self._s3.s3_endpoint or f"https://s3.{self._s3.s3_region}.amazonaws.com"
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise LakeError(f"CITYOS_LAKE_S3_ENDPOINT: {endpoint!r} is not http(s)://host[:port]")
            if parts.path.strip("/"):
                raise LakeError(f"CITYOS_LAKE_S3_ENDPOINT: {endpoint!r} must not have a path")
            self._minio = Minio(
                parts.netloc,
                access_key=self._s3.s3_access_key.get_secret_value() or None,
                secret_key=self._s3.s3_secret_key.get_secret_value() or None,
                secure=parts.scheme == "https",
                region=self._s3.s3_region,
            )
        return self._minio

    def ensure_bucket(self) -> None:
        """S3: create the bucket when it does not exist (minio SDK). Local: create the root folder."""
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)
            return
        client = self.minio()
        if not client.bucket_exists(self.bucket):
            from minio.error import S3Error

            try:
                client.make_bucket(self.bucket, location=self._s3.s3_region if self._s3 else None)
            except S3Error as error:  # created meanwhile by another process
                if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def presigned_get(self, path: str, expires: timedelta) -> str:
        """A URL that downloads `path` without credentials until `expires` from now (S3: a presigned GET
        signed by the minio SDK; local: a file:// URL)."""
        full = self._strip(path)
        if self._local:
            return Path(full).as_uri()
        bucket, _, key = full.partition("/")
        return self.minio().presigned_get_object(bucket, key, expires=expires)

    # -- files -----------------------------------------------------------------------------------

    def write_parquet_atomic(self, table: pa.Table, path: str, **options: Any) -> int:
        """Write `table` as one Parquet file at `path`, atomically (see the module doc); returns the file's
        size. `options` go to `pyarrow.parquet.write_table` (compression, row_group_size, …)."""
        import pyarrow.parquet as pq

        options.setdefault("compression", "zstd")
        if not self._local:
            with self.fs.open(path, "wb") as sink:
                pq.write_table(table, sink, **options)
                size: int = sink.tell()
            return size
        folder, name = posixpath.split(path)
        self.fs.makedirs(folder, exist_ok=True)
        temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(temporary, "wb") as sink:
                pq.write_table(table, sink, **options)
                sink.flush()
                os.fsync(sink.fileno())
                size = sink.tell()
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return size

    def write_bytes_atomic(self, data: bytes, path: str) -> None:
        """Write a small file (a manifest) atomically, as `write_parquet_atomic` does."""
        if not self._local:
            self.fs.pipe_file(path, data)
            return
        folder, name = posixpath.split(path)
        self.fs.makedirs(folder, exist_ok=True)
        temporary = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(temporary, "wb") as sink:
                sink.write(data)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def read_bytes(self, path: str) -> bytes:
        data: bytes = self.fs.cat_file(path)
        return data

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(path))

    def delete(self, path: str) -> None:
        """Delete a file; deleting a missing one is not an error."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def list_files(self, prefix: str) -> list[str]:
        """The data files under `prefix` (a folder, recursively), sorted; never temporaries or manifests."""
        return [path for path, _ in self.list_files_sized(prefix)]

    def list_files_sized(self, prefix: str) -> list[tuple[str, int]]:
        """`list_files` with each file's size in bytes (from the same listing)."""
        top = self._strip(prefix).rstrip("/")
        return [
            (path, size)
            for path, size in self.list_all(top)
            if is_data_file(path) and not _hidden_folder(path, top)
        ]

    def list_all(self, prefix: str) -> list[tuple[str, int]]:
        """Every file under `prefix` (hidden ones too) with its size, sorted: one listing."""
        top = self._strip(prefix).rstrip("/")
        try:
            found = self.fs.find(top, detail=True)
        except FileNotFoundError:
            return []
        return sorted((self._strip(path), int(info.get("size") or 0)) for path, info in found.items())

    def list_folders(self, prefix: str) -> list[str]:
        """The folders directly under `prefix` (e.g. a table's `dt=` partitions), sorted."""
        try:
            entries = self.fs.ls(prefix, detail=True)
        except FileNotFoundError:
            return []
        return sorted(self._strip(e["name"]) for e in entries if e["type"] == "directory")


def _hidden_folder(path: str, top: str) -> bool:
    """Whether a folder between `top` and the file is hidden (`.`/`_`: staging, not data)."""
    below = path[len(top) :].strip("/") if path.startswith(top) else path
    return any(part.startswith((".", "_")) for part in below.split("/")[:-1])
