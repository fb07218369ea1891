"""The access log file: hash-chained, append-only, verifiable."""

from __future__ import annotations

import json

import pytest

from cityos_platform.accesslog import AccessLog, AccessRecord, ChainBroken, read, verify


def _record(n: int) -> AccessRecord:
    return AccessRecord(
        time=f"2026-11-28T10:00:{n:02d}Z",
        subject=f"user-{n}",
        organization="transport",
        client="cli",
        on_behalf_of="",
        method="/cityos.testing.v1.MarkerService/GetMarker",
        resource=f"markers/m-{n}",
        code="OK",
        trace_id="ab" * 16,
        duration_ms=1.5,
        peer="ipv4:127.0.0.1:5000",
    )


async def test_records_survive_reopening_and_the_chain_continues(tmp_path):
    path = tmp_path / "audit" / "access-test.jsonl"
    log = AccessLog(path)
    for n in range(3):
        log.record(_record(n))
    await log.close()
    reopened = AccessLog(path)
    reopened.record(_record(3))
    await reopened.close()
    assert verify(path) == 4
    assert [entry["subject"] for entry in read(path)] == ["user-0", "user-1", "user-2", "user-3"]


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap"])
async def test_any_edit_removal_or_reordering_breaks_the_chain(tmp_path, tamper):
    path = tmp_path / "access.jsonl"
    log = AccessLog(path)
    for n in range(4):
        log.record(_record(n))
    await log.close()
    lines = path.read_text().splitlines()
    if tamper == "edit":
        entry = json.loads(lines[1])
        entry["code"] = "PERMISSION_DENIED"
        lines[1] = json.dumps(entry)
    elif tamper == "delete":
        del lines[2]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ChainBroken):
        verify(path)
