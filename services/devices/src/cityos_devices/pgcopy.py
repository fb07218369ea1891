"""PostgreSQL's binary COPY format for the telemetry spool, encoded for this one table.

The bulk ingest path hands PostgreSQL its rows with `COPY telemetry (…) FROM STDIN (FORMAT binary)`.
asyncpg's generic `copy_records_to_table` encodes every field of every row through its type codecs —
two datetimes, four strings, an integer and a JSON text per reading — and measured as the largest
single cost of ingest (about 5 µs a row, a third of the service's time). Here four of the eight columns
are the same for all of one device's readings (device, type, owner, H3 cell) and one is the same for
the whole batch (the receive time), so they are encoded once per device and only the sequence, the
measurement time and the values are packed per reading, with one `struct` call.

Format (PostgreSQL documentation, "COPY", "Binary Format"): an 11-byte signature, a 32-bit flags field
and a 32-bit header-extension length; then per tuple a 16-bit field count and per field a 32-bit length
followed by the field's binary send format; a 16-bit -1 ends the data. The send formats used: text and
varchar — the UTF-8 bytes; json — its text; int8 — 8 bytes big-endian; timestamptz — 8 bytes
big-endian, microseconds since 2000-01-01 00:00 UTC (integer datetimes, PostgreSQL's only kind since
version 10).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
# 2000-01-01 00:00 UTC, PostgreSQL's timestamp epoch, in microseconds since the Unix epoch.
POSTGRES_EPOCH_US = 946_684_800 * 1_000_000
# The order of the columns in the COPY statement: the per-device and per-batch ones first, so that
# each tuple is one constant prefix plus its reading's own three fields.
COLUMNS = (
    "device_id",
    "type",
    "owner_organization",
    "area_cell",
    "received_time",
    "sequence",
    "time",
    "values",
)
_FIELD_COUNT = struct.pack(">h", len(COLUMNS))
_TIMESTAMP = struct.Struct(">iq")
# sequence (int8), time (timestamptz) and the length of the values' JSON text that follows.
_READING = struct.Struct(">iqiqi")


@dataclass(frozen=True)
class DeviceRows:
    """One device's accepted readings as the spool stores them."""

    device_id: str
    type: str
    owner_organization: str
    area_cell: str
    received_us: int  # microseconds since the Unix epoch
    readings: list[tuple[int, int, str]]  # (sequence, measured at in Unix µs, values as JSON text)


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">i", len(data)) + data


def encode(devices: Iterable[DeviceRows]) -> bytes:
    """The COPY data (header to trailer) of the given devices' readings, columns as in `COLUMNS`.

    Hand it to asyncpg's `copy_to_table(…, format="binary")` as a memoryview: asyncpg takes `bytes`
    for a file name."""
    chunks = [HEADER]
    pack = _READING.pack
    for device in devices:
        prefix = b"".join(
            (
                _FIELD_COUNT,
                _text(device.device_id),
                _text(device.type),
                _text(device.owner_organization),
                _text(device.area_cell),
                _TIMESTAMP.pack(8, device.received_us - POSTGRES_EPOCH_US),
            )
        )
        for sequence, measured_us, values in device.readings:
            data = values.encode()
            chunks.append(prefix + pack(8, sequence, 8, measured_us - POSTGRES_EPOCH_US, len(data)) + data)
    chunks.append(TRAILER)
    return b"".join(chunks)
