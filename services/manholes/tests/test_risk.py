"""MAN-6, the fallback: until the analytics job has scored a cover, its risk comes from its own alarm
history (cityos_manholes.risk), so ListCoversByRisk always has an order — and an analytics score, once
written, is never overwritten by it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import timestamp_pb2

from cityos.manholes.v1 import manholes_pb2
from cityos_manholes.models import AlarmRow
from cityos_manholes.risk import PastAlarm, history_score, score_from_history

pytestmark = pytest.mark.req("MAN-6")
NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
CRITICAL, MAJOR, WARNING = (
    manholes_pb2.SEVERITY_CRITICAL,
    manholes_pb2.SEVERITY_MAJOR,
    manholes_pb2.SEVERITY_WARNING,
)
LOCAL, ARTERIAL = manholes_pb2.ROAD_CLASS_LOCAL, manholes_pb2.ROAD_CLASS_ARTERIAL


def past(severity, days_ago, resolved=True):
    return PastAlarm(severity, NOW - timedelta(days=days_ago), resolved)


def test_the_history_score_weighs_severity_recency_openness_and_traffic():
    assert history_score([], LOCAL, NOW) == 0.0
    recent_critical = history_score([past(CRITICAL, 1)], LOCAL, NOW)
    recent_major = history_score([past(MAJOR, 1)], LOCAL, NOW)
    old_critical = history_score([past(CRITICAL, 300)], LOCAL, NOW)
    assert recent_critical > recent_major > old_critical > 0
    assert history_score([past(CRITICAL, 400)], LOCAL, NOW) == 0.0  # beyond the year
    assert history_score([past(MAJOR, 1, resolved=False)], LOCAL, NOW) > recent_major
    assert history_score([past(MAJOR, 1)], ARTERIAL, NOW) == pytest.approx(recent_major * 1.2)
    many = [past(CRITICAL, day, resolved=False) for day in range(50)]
    assert history_score(many, ARTERIAL, NOW) == 1.0  # capped


def _alarm(alarm_id, cover_id, severity, raise_time, state=manholes_pb2.ALARM_STATE_RESOLVED):
    return AlarmRow(
        alarm_id=alarm_id,
        cover_id=cover_id,
        condition=manholes_pb2.ALARM_CONDITION_TILT,
        severity=severity,
        state=state,
        value=30.0,
        threshold=10.0,
        raise_time=raise_time,
        update_time=raise_time,
        update_count=0,
        cleared=True,
        acknowledged_by="",
        resolved_by="",
        resolution="",
        cover_kind=manholes_pb2.COVER_KIND_SEWER,
        area_cell="",
        owner_organization="drainage",
    )


async def _by_risk(street):
    page = await street.covers.ListCoversByRisk(
        manholes_pb2.ListCoversByRiskRequest(), metadata=street.operator
    )
    return [(cover.name, cover.risk.source) for cover in page.covers]


async def test_covers_rank_by_their_alarm_history_until_analytics_scores_them(street):
    for index, cover_id in enumerate(("quiet", "stormy", "stolen")):
        await street.cover(cover_id, offset=index * 0.001)
    now = datetime.now(UTC)
    async with street.app.db.transaction() as tx:
        tx.session.add(_alarm("a1", "stormy", MAJOR, now - timedelta(days=20)))
        tx.session.add(
            _alarm("a2", "stolen", CRITICAL, now - timedelta(hours=3), manholes_pb2.ALARM_STATE_RAISED)
        )
    assert await score_from_history(street.app.db) == 3
    history = manholes_pb2.RISK_SOURCE_ALARM_HISTORY
    assert await _by_risk(street) == [
        ("covers/stolen", history),
        ("covers/stormy", history),
        ("covers/quiet", history),
    ]
    assert await score_from_history(street.app.db) == 0  # nothing changed, nothing written
    # The analytics job scores the quiet cover high, with a computation older than the history run:
    # its score still applies (only an older analytics score is stale), and the scorer leaves it.
    computed = timestamp_pb2.Timestamp()
    computed.FromDatetime(now - timedelta(hours=1))
    answer = await street.covers.SetRiskScores(
        manholes_pb2.SetRiskScoresRequest(
            scores=[manholes_pb2.CoverRiskScore(cover="covers/quiet", score=0.99)],
            model_version="cover-risk-2026.11",
            computed_time=computed,
        ),
        metadata=street.analytics,
    )
    assert (answer.updated, answer.stale) == (1, 0)
    assert await score_from_history(street.app.db) == 0
    assert (await _by_risk(street))[0] == ("covers/quiet", manholes_pb2.RISK_SOURCE_ANALYTICS)
