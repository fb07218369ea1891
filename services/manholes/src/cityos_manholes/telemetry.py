"""Cover terminals on the devices telemetry feed: what they report, and following the feed.

A cover terminal is a device of type `manhole.terminal` (`ManholesSettings.terminal_type`); a cover
watches the terminal named by its `device` (`CoverRow.device_id`, one terminal per cover). Its metrics,
in the spirit of the LwM2M objects 3408 (manhole cover) and 3429 (well monitoring):

=================  ======  ==================================================================
metric             unit    meaning
=================  ======  ==================================================================
`open`             1       1 the lid is open (the contact), 0 closed
`tilt_deg`         °       the lid's absolute tilt (the rules subtract the install angle)
`displaced`        1       1 the lid is out of its frame, 0 in place
`water_level_m`    m       the water level in the well
`ch4_pct_lel`      %LEL    methane, of the lower explosive limit
`h2s_ppm`          ppm     hydrogen sulphide
`co_ppm`           ppm     carbon monoxide
`voc_ppm`          ppm     volatile organic compounds
`temperature_c`    °C      the temperature in the well (shown; no alarm)
`smoke`            1       1 smoke detected, 0 none
`battery_v`        V       the terminal's battery
`rsrp_dbm`         dBm     the radio signal (NB-IoT/LTE-M RSRP; shown; no alarm)
=================  ======  ==================================================================

Flags are true at 0.5 and above. A reading may carry any subset: what it leaves out keeps its last
value and decides nothing. Other metrics are ignored.

The follower is `cityos_platform.feeds.TelemetryFollower` (the subscription, the checkpoint in
`FeedCursorRow("devices.telemetry")` committed with the batch's effects, compare-and-set between
replicas, reconnecting with backoff) with `apply_records` as its callback; what a reading does to a
cover is `cityos_manholes.state`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select

from cityos.devices.v1 import devices_pb2
from cityos_manholes import rules, state
from cityos_manholes.models import CoverRow, FeedCursorRow
from cityos_manholes.settings import ManholesSettings
from cityos_platform import feeds
from cityos_platform.clock import SYSTEM_CLOCK, Clock
from cityos_platform.config import Settings
from cityos_platform.db import Database, Tx

log = logging.getLogger(__name__)

SERVICE = "manholes"
FEED = feeds.FEED

OPEN, TILT, DISPLACED, WATER_LEVEL = "open", "tilt_deg", "displaced", "water_level_m"
SMOKE, BATTERY, TEMPERATURE, RSRP = "smoke", "battery_v", "temperature_c", "rsrp_dbm"
GASES = tuple(rules.GAS_CONDITIONS)  # ch4_pct_lel, h2s_ppm, co_ppm, voc_ppm
METRICS = (OPEN, TILT, DISPLACED, WATER_LEVEL, *GASES, TEMPERATURE, SMOKE, BATTERY, RSRP)


def _flag(values: dict[str, float], name: str) -> bool | None:
    value = values.get(name)
    return None if value is None else value >= 0.5


def measured_of(record: devices_pb2.TelemetryRecord) -> state.Measured:
    """A feed record of a terminal as the cover's state and rules read it."""
    values = dict(record.reading.values)
    reading = rules.Reading(
        time=feeds.when(record.reading.time),
        open=_flag(values, OPEN),
        tilt_deg=values.get(TILT),
        displaced=_flag(values, DISPLACED),
        water_level_m=values.get(WATER_LEVEL),
        gases={gas: values[gas] for gas in GASES if gas in values},
        smoke=_flag(values, SMOKE),
        battery_v=values.get(BATTERY),
    )
    return state.Measured(
        reading=reading,
        received=feeds.when(record.received_time),
        temperature_c=values.get(TEMPERATURE),
        rsrp_dbm=values.get(RSRP),
    )


async def apply_records(tx: Tx, records: Sequence[devices_pb2.TelemetryRecord], terminal_type: str) -> int:
    """Apply a batch of feed records in `tx`, in feed order; the number that concerned a bound terminal
    (records of terminals no cover watches are skipped)."""
    terminals = feeds.device_ids(records, [terminal_type])
    if not terminals:
        return 0
    # Lock the covers in one order everywhere (the heartbeat sweep too), so two writers never deadlock.
    covers = {
        row.device_id: row
        for row in await tx.session.scalars(
            select(CoverRow)
            .where(CoverRow.device_id.in_(sorted(terminals)))
            .order_by(CoverRow.cover_id)
            .with_for_update()
        )
    }
    if not covers:
        return 0
    cover_ids = [row.cover_id for row in covers.values()]
    alarms = await state.open_alarms(tx, cover_ids)
    windows = await state.work_windows(tx, cover_ids)
    applied = 0
    for record in records:
        row = covers.get(record.device.partition("/")[2]) if record.type == terminal_type else None
        if row is not None:
            state.apply_reading(tx, row, measured_of(record), alarms[row.cover_id], windows[row.cover_id])
            applied += 1
    return applied


def telemetry_follower(
    db: Database, settings: Settings, manholes: ManholesSettings, *, clock: Clock = SYSTEM_CLOCK
) -> feeds.TelemetryFollower | None:
    """The follower of the devices feed, when this deployment has one: following is on
    (`CITYOS_MANHOLES_FOLLOW_TELEMETRY`), `CITYOS_ENDPOINTS` names `devices` and the service has its
    client secret (`CITYOS_AUTH_CLIENT_SECRET`). Otherwise None, and the log says what is missing:
    covers then have no live state and no alarms from readings."""
    if not manholes.follow_telemetry:
        log.info("cover state from telemetry is off (CITYOS_MANHOLES_FOLLOW_TELEMETRY=false)")
        return None
    terminal_type = manholes.terminal_type

    async def apply(tx: Tx, records: Sequence[devices_pb2.TelemetryRecord]) -> int:
        return await apply_records(tx, records, terminal_type)

    return feeds.telemetry_follower(
        db,
        settings,
        SERVICE,
        types=[terminal_type],
        cursor_model=FeedCursorRow,
        apply=apply,
        retry_s=manholes.feed_retry_s,
        without="covers get no live state and no alarms from their terminals",
        clock=clock,
    )
