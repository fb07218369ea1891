"""Fault rows as the API shows them, and their events: the one place that turns a `FaultRow` into a
`Fault` and writes `streetlights.fault.*` on the outbox, for every part of the service that changes
faults (the rules applied to readings, the heartbeat sweep, acknowledging by hand).

Events: `streetlights.fault.raised`, `.updated`, `.cleared`, `.acknowledged`, each a `FaultChanged` (the
fault after the change and its state before), with the fault's name as subject, scoped to the
subject's owner and cell, so `WatchFaults` and the lake read one stream. An outage raised is also
`streetlights.cabinet.offline` or `streetlights.feeder.offline` (the same `FaultChanged`, the cabinet or
feeder as subject).

`FaultBook` holds the open faults of some subjects within one transaction and raises, updates and
clears them: one open fault per subject and kind (the partial unique index `uq_faults_open_subject_kind`
says so too), a cleared one stays as history and the next occurrence is a new fault.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Protocol

from sqlalchemy import select

from cityos.streetlights.v1 import faults_pb2
from cityos_platform.db import Tx
from cityos_streetlights.common import emit, stamp
from cityos_streetlights.models import FAULT_CLEARED, FaultRow
from cityos_streetlights.rules import CABINET_OUTAGE, FEEDER_OUTAGE, SYMPTOMS, Finding

UNSPECIFIED = int(faults_pb2.FAULT_STATE_UNSPECIFIED)
OPEN = int(faults_pb2.FAULT_STATE_OPEN)
ACKNOWLEDGED = int(faults_pb2.FAULT_STATE_ACKNOWLEDGED)
CLEARED = int(faults_pb2.FAULT_STATE_CLEARED)
assert CLEARED == FAULT_CLEARED
FAULT_EVENTS = frozenset({"raised", "updated", "cleared", "acknowledged"})
OFFLINE_EVENTS = {int(CABINET_OUTAGE): "cabinet.offline", int(FEEDER_OUTAGE): "feeder.offline"}
LOAD_CHUNK = 500


class Owned(Protocol):
    """What a fault copies from its subject (a light or a cabinet; a feeder's is its cabinet's)."""

    owner_organization: str
    operator_organization: str
    maintainer_organization: str
    area_cell: str


def fault_to_proto(row: FaultRow) -> faults_pb2.Fault:
    return faults_pb2.Fault(
        name=f"faults/{row.fault_id}",
        kind=row.kind,  # type: ignore[arg-type]
        subject=row.subject,
        state=row.state,  # type: ignore[arg-type]
        affected_lights=[f"lights/{light_id}" for light_id in row.affected_lights],
        detail=row.detail,
        value=row.value,
        expected=row.expected,
        raise_time=stamp(row.raise_time),
        update_time=stamp(row.update_time),
        clear_time=stamp(row.clear_time) if row.clear_time is not None else None,
        acknowledged_by=row.acknowledged_by,
        acknowledge_time=stamp(row.acknowledge_time) if row.acknowledge_time is not None else None,
        owner_organization=row.owner_organization,
        area_cell=row.area_cell,
    )


def emit_fault(tx: Tx, event: str, row: FaultRow, previous_state: int) -> faults_pb2.Fault:
    """Write `streetlights.fault.<event>` for the row as it is now; returns the fault as sent."""
    if event not in FAULT_EVENTS:
        raise ValueError(f"unknown fault event {event!r}; one of {sorted(FAULT_EVENTS)}")
    fault = fault_to_proto(row)
    emit(
        tx,
        f"fault.{event}",
        faults_pb2.FaultChanged(fault=fault, previous_state=previous_state),  # type: ignore[arg-type]
        subject=fault.name,
        owner=row.owner_organization,
        cell=row.area_cell,
    )
    return fault


def folded_detail(outage: FaultRow) -> str:
    return f"folded into faults/{outage.fault_id}"


class FaultBook:
    """The open faults of the subjects loaded (`load()`), in one transaction, kept in step with what
    it raises, updates and clears."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self._open: dict[tuple[str, int], FaultRow] = {}
        self._loaded: set[str] = set()

    async def load(self, subjects: Iterable[str]) -> None:
        """Read the open faults of the subjects not loaded yet."""
        new = sorted(set(subjects) - self._loaded)
        for start in range(0, len(new), LOAD_CHUNK):
            chunk = new[start : start + LOAD_CHUNK]
            rows = await self.tx.session.scalars(
                select(FaultRow).where(FaultRow.subject.in_(chunk), FaultRow.state != CLEARED)
            )
            for row in rows:
                self._open[(row.subject, row.kind)] = row
        self._loaded.update(new)

    def get(self, subject: str, kind: int) -> FaultRow | None:
        """The open fault of the subject and kind (the subject must be loaded)."""
        if subject not in self._loaded:
            raise KeyError(f"the faults of {subject} were not loaded")
        return self._open.get((subject, int(kind)))

    def raise_fault(
        self, subject: str, owned: Owned, finding: Finding, affected: Sequence[str] = ()
    ) -> FaultRow:
        """A new open fault, `streetlights.fault.raised` (and `.cabinet.offline` / `.feeder.offline`
        for an outage)."""
        tx = self.tx
        row = FaultRow(
            fault_id=uuid.uuid4().hex,
            kind=int(finding.kind),
            subject=subject,
            state=OPEN,
            affected_lights=sorted(affected),
            detail=finding.detail[:500],
            value=finding.value,
            expected=finding.expected,
            raise_time=tx.now,
            update_time=tx.now,
            clear_time=None,
            acknowledged_by="",
            acknowledge_time=None,
            area_cell=owned.area_cell,
            owner_organization=owned.owner_organization,
            operator_organization=owned.operator_organization,
            maintainer_organization=owned.maintainer_organization,
        )
        tx.session.add(row)
        self._open[(subject, row.kind)] = row
        self._loaded.add(subject)
        fault = emit_fault(tx, "raised", row, UNSPECIFIED)
        offline = OFFLINE_EVENTS.get(row.kind)
        if offline is not None:
            emit(
                tx,
                offline,
                faults_pb2.FaultChanged(fault=fault, previous_state=UNSPECIFIED),  # type: ignore[arg-type]
                subject=subject,
                owner=row.owner_organization,
                cell=row.area_cell,
            )
        return row

    def update(self, row: FaultRow, finding: Finding, affected: Sequence[str] | None = None) -> bool:
        """Store what the rules see now; `streetlights.fault.updated` when the detail, the expected
        value or the affected lights changed (a value moving within them is stored silently)."""
        detail = finding.detail[:500]
        lights = sorted(affected) if affected is not None else row.affected_lights
        changed = (detail, finding.expected, lights) != (row.detail, row.expected, row.affected_lights)
        row.value = finding.value
        if not changed:
            return False
        row.detail, row.expected, row.affected_lights = detail, finding.expected, lights
        row.update_time = self.tx.now
        emit_fault(self.tx, "updated", row, row.state)
        return True

    def clear(self, row: FaultRow, detail: str | None = None) -> None:
        """The condition ended (or a root cause explains it, `detail` says which): CLEARED,
        `streetlights.fault.cleared`."""
        previous = row.state
        row.state = CLEARED
        row.clear_time = row.update_time = self.tx.now
        if detail is not None:
            row.detail = detail[:500]
        self._open.pop((row.subject, row.kind), None)
        emit_fault(self.tx, "cleared", row, previous)

    def settle(self, subject: str, owned: Owned, kind: int, finding: Finding | None) -> FaultRow | None:
        """Make the open fault of the subject and kind match what the rules found: raise it, update it
        or clear it. Returns the fault raised, if one was."""
        row = self.get(subject, kind)
        if finding is None:
            if row is not None:
                self.clear(row)
            return None
        if row is None:
            return self.raise_fault(subject, owned, finding)
        self.update(row, finding)
        return None

    def fold(self, light_ids: Iterable[str], outage: FaultRow) -> int:
        """Clear the open symptom faults of the lights (loaded) into the outage that explains them;
        how many."""
        folded = 0
        for light_id in sorted(light_ids):
            for kind in sorted(SYMPTOMS):
                row = self.get(f"lights/{light_id}", kind)
                if row is not None:
                    self.clear(row, folded_detail(outage))
                    folded += 1
        return folded
