"""The access log: one record per call, appended to a hash-chained JSON-lines file.

Every record holds time, subject, organization, client, the subject acted for, method, resource,
status, trace id and duration. Each line carries `prev` (the hash of the line before) and `hash`
(SHA-256 of `prev` and the record), so removing, reordering or editing a line breaks the chain that
`verify()` walks; the identity service's auditors read it that way. The file is opened in append mode
only; records are queued by the interceptor and written by a background task, so a call never waits
for the disk. Each service process writes its own file (`var/audit/access-<service>.jsonl` in embedded
mode; a volume or the log collector in production, see docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64


@dataclass(frozen=True)
class AccessRecord:
    time: str
    subject: str
    organization: str
    client: str
    on_behalf_of: str
    method: str
    resource: str
    code: str
    trace_id: str
    duration_ms: float
    peer: str


class ChainBroken(Exception):
    """The log was altered: a line's hash or its link to the previous line does not hold."""


def _digest(previous: str, record: dict[str, object]) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((previous + body).encode()).hexdigest()


def _last_hash(path: Path) -> str:
    if not path.exists() or path.stat().st_size == 0:
        return GENESIS
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 65536))
        tail = handle.read().splitlines()
    for line in reversed(tail):
        if line.strip():
            return str(json.loads(line)["hash"])
    return GENESIS


class AccessLog:
    """Appends records to `path`; `record()` never blocks, `flush()`/`close()` write what is queued."""

    def __init__(self, path: Path, *, flush_interval_s: float = 0.2) -> None:
        self.path = path
        self.flush_interval_s = flush_interval_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._previous = _last_hash(path)
        self._queue: list[AccessRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, record: AccessRecord) -> None:
        self._queue.append(record)
        if self._task is None:
            with contextlib.suppress(RuntimeError):  # no running loop: flushed on close()
                self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._queue:
                return
            batch, self._queue = self._queue, []
            lines = []
            for record in batch:
                body = dict(vars(record))  # flat fields: no deep copy (asdict) on the hot path
                digest = _digest(self._previous, body)
                lines.append(
                    json.dumps({**body, "prev": self._previous, "hash": digest}, separators=(",", ":"))
                )
                self._previous = digest
            data = ("\n".join(lines) + "\n").encode()
            await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(descriptor, data)
        finally:
            os.close(descriptor)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


def read(path: Path) -> Iterator[dict[str, object]]:
    """The records of a log, verifying the chain as it goes (raises ChainBroken)."""
    previous = GENESIS
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            entry = json.loads(line)
            stored_prev, stored_hash = entry.pop("prev"), entry.pop("hash")
            if stored_prev != previous or _digest(previous, entry) != stored_hash:
                raise ChainBroken(f"{path}: line {number} does not follow from the line before it")
            previous = stored_hash
            yield entry


def verify(path: Path) -> int:
    """The number of records, after checking the whole chain."""
    return sum(1 for _ in read(path))


def read_from(path: Path, offset: int, previous: str) -> Iterator[tuple[dict[str, object], int, str]]:
    """Records after byte `offset` (whose line before has hash `previous`), verifying the chain as it
    goes: each as (record, the offset after its line, its hash). A line not yet complete (being
    written) ends the iteration; an altered one raises ChainBroken. For readers that resume, as the
    identity service's audit importer does."""
    with path.open("rb") as handle:
        handle.seek(offset)
        for line in handle:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            if not line.strip():
                continue
            entry = json.loads(line)
            stored_prev, stored_hash = entry.pop("prev"), entry.pop("hash")
            if stored_prev != previous or _digest(previous, entry) != stored_hash:
                raise ChainBroken(
                    f"{path}: the record ending at byte {offset} does not follow its predecessor"
                )
            previous = stored_hash
            yield entry, offset, stored_hash
