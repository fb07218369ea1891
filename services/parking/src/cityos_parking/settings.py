"""Settings of the parking service beyond the platform's (`CITYOS_PARKING_*`)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ParkingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOS_PARKING_", extra="ignore", frozen=True)

    # -- occupancy from the devices telemetry feed -------------------------------------------------
    # Follow the feed (off: occupancy comes from operators and gates only, e.g. a deployment without
    # the devices service).
    follow_telemetry: bool = True
    # The device type of spot sensors on the feed.
    sensor_type: str = "parking.sensor"
    # A sensor silent for longer than this makes its spot UNKNOWN (geomagnetic sensors send a heartbeat
    # about hourly while nothing changes; two missed heartbeats and a margin).
    sensor_heartbeat_timeout_s: float = Field(default=7800.0, ge=10, le=7 * 24 * 3600)
    # How often silent sensors are looked for.
    heartbeat_check_interval_s: float = Field(default=30.0, gt=0, le=3600)
    # Wait this long before reconnecting to the feed after it failed (doubling up to 30 s).
    feed_retry_s: float = Field(default=1.0, gt=0, le=60)

    # -- reservations and sessions -----------------------------------------------------------------
    # A hold not checked in this long after its start expires.
    hold_grace_s: int = Field(default=900, ge=0, le=24 * 3600)
    # How often expired holds are released and running sessions checked for overstay.
    sweep_interval_s: float = Field(default=30.0, gt=0, le=3600)

    # -- personal data -----------------------------------------------------------------------------
    # Plates in clear are erased this long after the reservation or session they belong to ended.
    plate_retention_days: float = Field(default=30.0, gt=0, le=3650)
    # The key of plate pseudonyms (HMAC-SHA256); empty: generated once under <var>/secrets/.
    # Production sets it from a Secret so every replica gives a plate the same pseudonym.
    plate_pseudonym_key: SecretStr = SecretStr("")
