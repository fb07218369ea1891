"""Settings of the streetlights service beyond the platform's (`CITYOS_STREETLIGHTS_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StreetlightsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOS_STREETLIGHTS_", extra="ignore", frozen=True)

    # -- live state and faults from the devices telemetry feed ----------------------------------------
    # Follow the feed (off: lights and cabinets get no live state, no faults and no energy).
    follow_telemetry: bool = True
    # The device types of light controllers and cabinet controllers on the feed (their metrics:
    # cityos_streetlights.telemetry).
    controller_type: str = "streetlight.controller"
    cabinet_type: str = "streetlight.cabinet"
    # How often silent controllers are looked for (each light's timeout is its heartbeat_timeout).
    heartbeat_check_interval_s: float = Field(default=60.0, gt=0, le=3600)
    # A cabinet controller silent this long is missing (lights have their own timeout).
    cabinet_heartbeat_timeout_s: float = Field(default=7200.0, ge=60, le=7 * 86400)
    # Wait this long before reconnecting to the feed after it failed (doubling up to 30 s).
    feed_retry_s: float = Field(default=1.0, gt=0, le=60)

    # -- fault rules ------------------------------------------------------------------------------------
    # A burning lamp's power may differ from its model's rating at its dimming level by this share.
    power_tolerance: float = Field(default=0.25, gt=0, le=1)
    # Day burner: on while the sun is this far past sunrise and before sunset.
    day_burner_margin_s: float = Field(default=1800.0, ge=0, le=3 * 3600)
    # Lamp out: dark this long after what is in force said on (the controller gets its desired state
    # with its next uplink, minutes later on NB-IoT).
    lamp_out_grace_s: float = Field(default=900.0, ge=0, le=6 * 3600)
    # Below this a phase (and a light's supply) is dead (V).
    outage_voltage_v: float = Field(default=100.0, gt=0, le=400)

    # -- schedules and control --------------------------------------------------------------------------
    # Apply the groups' schedules (desired state on the twins through devices jobs).
    apply_schedules: bool = True
    # How often schedules and expired overrides are looked at.
    schedule_interval_s: float = Field(default=30.0, gt=0, le=3600)
    # The rollout of schedule jobs (controllers per minute; 0: all at once).
    schedule_rollout_per_minute: int = Field(default=0, ge=0, le=100_000)

    # -- energy -------------------------------------------------------------------------------------------
    # Hourly energy buckets are kept this many days (the lake keeps the history beyond).
    energy_retention_days: int = Field(default=400, ge=1, le=3650)
    # Two readings of a light further apart than this leave a gap: the interval is not metered
    # (cityos_streetlights.energy.meter's `max_gap_s`).
    energy_max_gap_s: float = Field(default=6 * 3600.0, gt=0, le=7 * 86400)
