"""Settings of the manholes service beyond the platform's (`CITYOS_MANHOLES_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ManholesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOS_MANHOLES_", extra="ignore", frozen=True)

    # -- live state and alarms from the devices telemetry feed ------------------------------------
    # Follow the feed (off: covers get no live state and no alarms from their terminals, e.g. a
    # deployment without the devices service).
    follow_telemetry: bool = True
    # The device type of cover terminals on the feed (their metrics: cityos_manholes.telemetry).
    terminal_type: str = "manhole.terminal"
    # How often silent terminals are looked for (each cover's timeout is its heartbeat threshold).
    heartbeat_check_interval_s: float = Field(default=60.0, gt=0, le=3600)
    # Wait this long before reconnecting to the feed after it failed (doubling up to 30 s).
    feed_retry_s: float = Field(default=1.0, gt=0, le=60)

    # -- risk --------------------------------------------------------------------------------------
    # The clients (the `azp` of their service-account tokens) allowed to write risk scores: the
    # analytics job's service account. The role `service` alone is not enough, since every service
    # holds it. A JSON list in the environment, e.g. `["cityos-analytics"]`.
    risk_writers: frozenset[str] = frozenset({"cityos-analytics"})
    # How often covers the analytics job has not scored get a score from their alarm history.
    history_interval_s: float = Field(default=300.0, gt=0, le=86400)
