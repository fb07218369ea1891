"""The exporter's durable local spool: what was read from the streams and is not yet in the lake.

One SQLite file (`<var_dir>/exporter/spool.sqlite`, WAL, `synchronous=FULL`) holds

- `chunks`: the rows of one received batch for one lake table, as an Arrow IPC stream in the table's
  schema, numbered by `seq` (AUTOINCREMENT: a number is never reused, even after its chunk is gone);
- `cursors`: each stream's position (`devices`, `parking`, … for StreamEvents; `devices.telemetry`
  for the telemetry feed);
- `parts`: the parts being written to the lake (table, source, first..last seq);
- `meta`: the spool's epoch, a random id made with the file.

The contract that makes the lake exactly once:

1. `commit(source, expected, cursor, chunks)`: a batch's chunks and the stream's new cursor in ONE
   transaction (compare-and-set on the cursor). A crash before the commit leaves neither: the stream is
   read again from the old cursor; after it, both: the stream resumes after the batch.
2. `parts(max_rows)`: the parts to write. Parts recorded earlier and not completed (a crash between
   writing and completing) come back first and unchanged; only when there are none are new parts
   planned — per (table, source), consecutive chunks in seq order, at most `max_rows` rows each — and
   recorded in one transaction before any file is written.
3. The flusher writes `read(part)` as `part.part_id` (`<source>-<epoch>-<first seq>-<last seq>`): the
   same part always holds the same rows and has the same id, so writing it again after a crash
   overwrites the same files with the same rows.
4. `complete(part)`: its chunks and its record leave the spool in one transaction.

The epoch keeps part ids unique if the spool is ever lost and made again (seq numbers restart): the
new parts cannot overwrite the old ones. Methods are synchronous and thread-safe (one connection behind
a lock); the exporter calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    source TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    spooled_at REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_part ON chunks (table_name, source, seq);
CREATE TABLE IF NOT EXISTS cursors (source TEXT PRIMARY KEY, cursor TEXT NOT NULL, update_time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
    table_name TEXT NOT NULL,
    source TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    row_count INTEGER NOT NULL,
    PRIMARY KEY (table_name, source, first_seq)
);
"""


class CursorMoved(Exception):
    """The stream's cursor in the spool is not the one the batch was read after (another exporter
    moved it): the batch is not spooled; read again from the stored cursor."""


@dataclass(frozen=True)
class Part:
    """Consecutive chunks of one table from one source: one part in the lake."""

    table: str
    source: str
    first_seq: int
    last_seq: int
    rows: int
    epoch: str

    @property
    def part_id(self) -> str:
        return f"{self.source}-{self.epoch}-{self.first_seq:012d}-{self.last_seq:012d}"


@dataclass(frozen=True)
class SpoolStats:
    rows: int
    chunks: int
    oldest_spooled_at: float | None  # unix time of the oldest chunk; None when empty

    def lag_s(self, now: float) -> float:
        """How long the oldest row has waited for the lake (0 when nothing waits)."""
        return max(0.0, now - self.oldest_spooled_at) if self.oldest_spooled_at is not None else 0.0


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def from_ipc(data: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()


class Spool:
    """The spool file at `path` (created with its folder when missing).

    `pause(point)` is called inside the batch transaction of `commit` before it commits, with
    `"spool_commit"` (the fault tests stop the process there)."""

    def __init__(
        self,
        path: Path,
        *,
        pause: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.pause = pause
        self.clock = clock
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if row is None:
                self.epoch = secrets.token_hex(4)
                conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (self.epoch,))
            else:
                self.epoch = str(row[0])
            total = conn.execute("SELECT COALESCE(SUM(row_count), 0) FROM chunks").fetchone()
        self._rows = int(total[0])

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT, ROLLBACK on any error), under the lock."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self._rows += delta

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- the streams' side -------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """The rows spooled and not yet in the lake."""
        return self._rows

    def cursor(self, source: str) -> str:
        """The stored position of `source`'s stream ("" before its first batch)."""
        with self._lock:
            row = self._conn.execute("SELECT cursor FROM cursors WHERE source = ?", (source,)).fetchone()
        return str(row[0]) if row is not None else ""

    def commit(self, source: str, expected: str, cursor: str, chunks: Mapping[str, pa.Table]) -> int:
        """Spool a batch's rows (lake table -> rows) and move `source`'s cursor from `expected` to
        `cursor`, in one transaction; the number of rows spooled. CursorMoved when the stored cursor is
        not `expected` (nothing is written)."""
        now = self.clock()
        blobs = [(name, int(rows.num_rows), to_ipc(rows)) for name, rows in chunks.items() if rows.num_rows]
        added = sum(count for _, count, _ in blobs)
        with self._transaction() as conn:
            row = conn.execute("SELECT cursor FROM cursors WHERE source = ?", (source,)).fetchone()
            if (str(row[0]) if row is not None else "") != expected:
                raise CursorMoved(source)
            conn.executemany(
                "INSERT INTO chunks (table_name, source, row_count, spooled_at, data) VALUES (?, ?, ?, ?, ?)",
                [(name, source, count, now, blob) for name, count, blob in blobs],
            )
            conn.execute(
                "INSERT INTO cursors (source, cursor, update_time) VALUES (?, ?, ?) ON CONFLICT (source) "
                "DO UPDATE SET cursor = excluded.cursor, update_time = excluded.update_time",
                (source, cursor, now),
            )
            if self.pause is not None:
                self.pause("spool_commit")
        self._count(added)
        return added

    # -- the flusher's side ------------------------------------------------------------------------

    def parts(self, max_rows: int) -> list[Part]:
        """The parts to write now: those recorded and not completed, unchanged; else new ones for
        everything spooled (per table and source, consecutive chunks of at most `max_rows` rows, a
        bigger chunk alone), recorded in one transaction before they are returned."""
        with self._transaction() as conn:
            pending = conn.execute(
                "SELECT table_name, source, first_seq, last_seq, row_count FROM parts "
                "ORDER BY first_seq, table_name, source"
            ).fetchall()
            if pending:
                return [
                    Part(str(table), str(source), int(first), int(last), int(count), self.epoch)
                    for table, source, first, last, count in pending
                ]
            chunks = conn.execute(
                "SELECT table_name, source, seq, row_count FROM chunks ORDER BY table_name, source, seq"
            ).fetchall()
            planned: list[Part] = []
            current: Part | None = None
            for table_name, source, seq, count in chunks:
                if (
                    current is not None
                    and (current.table, current.source) == (table_name, source)
                    and current.rows + count <= max_rows
                ):
                    current = Part(
                        table_name, source, current.first_seq, seq, current.rows + count, self.epoch
                    )
                    continue
                if current is not None:
                    planned.append(current)
                current = Part(table_name, source, seq, seq, count, self.epoch)
            if current is not None:
                planned.append(current)
            conn.executemany(
                "INSERT INTO parts (table_name, source, first_seq, last_seq, row_count) "
                "VALUES (?, ?, ?, ?, ?)",
                [(p.table, p.source, p.first_seq, p.last_seq, p.rows) for p in planned],
            )
        return sorted(planned, key=lambda part: (part.first_seq, part.table, part.source))

    def read(self, part: Part) -> pa.Table:
        """The part's rows, in seq order (chunks written with an older schema have their missing
        columns as nulls)."""
        with self._lock:
            blobs = self._conn.execute(
                "SELECT data FROM chunks WHERE table_name = ? AND source = ? AND seq BETWEEN ? AND ? "
                "ORDER BY seq",
                (part.table, part.source, part.first_seq, part.last_seq),
            ).fetchall()
        tables = [from_ipc(blob) for (blob,) in blobs]
        if not tables:
            raise LookupError(f"the spool holds no rows of part {part.part_id} of {part.table}")
        return pa.concat_tables(tables, promote_options="default")

    def complete(self, part: Part) -> None:
        """The part is in the lake: its chunks and its record leave the spool (one transaction)."""
        with self._transaction() as conn:
            removed = conn.execute(
                "SELECT COALESCE(SUM(row_count), 0) FROM chunks "
                "WHERE table_name = ? AND source = ? AND seq BETWEEN ? AND ?",
                (part.table, part.source, part.first_seq, part.last_seq),
            ).fetchone()[0]
            conn.execute(
                "DELETE FROM chunks WHERE table_name = ? AND source = ? AND seq BETWEEN ? AND ?",
                (part.table, part.source, part.first_seq, part.last_seq),
            )
            conn.execute(
                "DELETE FROM parts WHERE table_name = ? AND source = ? AND first_seq = ?",
                (part.table, part.source, part.first_seq),
            )
        self._count(-int(removed))

    def stats(self) -> SpoolStats:
        with self._lock:
            rows, chunks, oldest = self._conn.execute(
                "SELECT COALESCE(SUM(row_count), 0), COUNT(*), MIN(spooled_at) FROM chunks"
            ).fetchone()
        return SpoolStats(int(rows), int(chunks), float(oldest) if oldest is not None else None)
