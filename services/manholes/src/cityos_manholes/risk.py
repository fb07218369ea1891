"""A cover's risk from its own alarm history, until the analytics job has scored it.

The analytics job (issue 9) writes scores with SetRiskScores (`RISK_SOURCE_ANALYTICS`); a cover it has
not scored gets one from its alarms, recomputed every `history_interval_s` by `HistoryScorer`
(`RISK_SOURCE_ALARM_HISTORY`, model version `alarm-history-v1`), so ListCoversByRisk always has an
order. The formula (pure, `history_score`):

    total = Σ over the cover's alarms raised in the last 365 days of
                severity weight * exp(-age in days / 90)        (INFO 0.05, WARNING 0.1,
                                                                  MAJOR 0.25, CRITICAL 0.5)
            + 0.2 for each alarm still open (not resolved)
    score = (1 - exp(-total)) * road factor, at most 1          (expressway and arterial 1.2, else 1)

so a recent critical alarm weighs about twice a recent major one, a year-old alarm next to nothing, an
open alarm more than a closed one, and a cover under heavy traffic more than one under a pavement. A
cover with no alarms scores 0. An analytics score is never overwritten by this one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from cityos.manholes.v1 import manholes_pb2
from cityos_manholes.models import AlarmRow, CoverRow
from cityos_platform.db import Database
from cityos_platform.tasks import PeriodicTask

MODEL_VERSION = "alarm-history-v1"
WINDOW = timedelta(days=365)
DECAY_DAYS = 90.0
OPEN_ALARM = 0.2
WEIGHTS = {
    manholes_pb2.SEVERITY_INFO: 0.05,
    manholes_pb2.SEVERITY_WARNING: 0.1,
    manholes_pb2.SEVERITY_MAJOR: 0.25,
    manholes_pb2.SEVERITY_CRITICAL: 0.5,
}
BUSY_ROADS = {manholes_pb2.ROAD_CLASS_EXPRESSWAY, manholes_pb2.ROAD_CLASS_ARTERIAL}
ROAD_FACTOR = 1.2
BATCH = 1000


@dataclass(frozen=True)
class PastAlarm:
    severity: int
    raise_time: datetime
    resolved: bool


def history_score(alarms: Iterable[PastAlarm], road_class: int, now: datetime) -> float:
    """The score (0 to 1) of a cover with these alarms (see the module docstring)."""
    total = 0.0
    for alarm in alarms:
        age = now - alarm.raise_time
        if age > WINDOW:
            continue
        days = max(0.0, age.total_seconds() / 86400)
        total += WEIGHTS.get(alarm.severity, 0.0) * math.exp(-days / DECAY_DAYS)  # type: ignore[call-overload]
        if not alarm.resolved:
            total += OPEN_ALARM
    factor = ROAD_FACTOR if road_class in BUSY_ROADS else 1.0
    return min(1.0, (1.0 - math.exp(-total)) * factor)


async def score_from_history(db: Database) -> int:
    """Recompute the history score of every cover the analytics job has not scored; returns how many
    changed. In batches of covers, each batch one transaction."""
    changed = 0
    after = ""
    while True:
        async with db.transaction() as tx:
            covers = (
                await tx.session.scalars(
                    select(CoverRow)
                    .where(
                        CoverRow.cover_id > after,
                        CoverRow.risk_source != int(manholes_pb2.RISK_SOURCE_ANALYTICS),
                    )
                    .order_by(CoverRow.cover_id)
                    .limit(BATCH)
                    .with_for_update()
                )
            ).all()
            if not covers:
                return changed
            after = covers[-1].cover_id
            history: dict[str, list[PastAlarm]] = defaultdict(list)
            rows = await tx.session.execute(
                select(AlarmRow.cover_id, AlarmRow.severity, AlarmRow.raise_time, AlarmRow.state).where(
                    AlarmRow.cover_id.in_([cover.cover_id for cover in covers]),
                    AlarmRow.raise_time >= tx.now - WINDOW,
                )
            )
            for cover_id, severity, raise_time, state in rows:
                history[cover_id].append(
                    PastAlarm(severity, raise_time, state == manholes_pb2.ALARM_STATE_RESOLVED)
                )
            for cover in covers:
                score = round(history_score(history[cover.cover_id], cover.road_class, tx.now), 6)
                if cover.risk_score != score or cover.risk_source != manholes_pb2.RISK_SOURCE_ALARM_HISTORY:
                    cover.risk_score = score
                    cover.risk_source = int(manholes_pb2.RISK_SOURCE_ALARM_HISTORY)
                    cover.risk_model_version = MODEL_VERSION
                    cover.risk_time = tx.now
                    changed += 1


class HistoryScorer(PeriodicTask):
    """Runs `score_from_history` every `interval_s` (once per replica: its first worker)."""

    def __init__(self, db: Database, interval_s: float) -> None:
        super().__init__("risk from alarm history", interval_s, lambda: score_from_history(db))
