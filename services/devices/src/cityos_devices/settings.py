"""Settings of the devices service beyond the platform's (`CITYOS_DEVICES_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DevicesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOS_DEVICES_", extra="ignore", frozen=True)

    # The MQTT broker's admin endpoint, `mqtt://<dynsec admin>:<password>@host:1883`; empty turns the
    # MQTT ingress (broker provisioning and the adapter) off.
    mqtt_url: str = ""

    # The device CA (PEM files); empty: a CA created once under var/devices-ca/ (embedded mode).
    ca_cert_file: str = ""
    ca_key_file: str = ""

    # How long accepted readings stay in the telemetry spool (the lake keeps the history; ADR-0004).
    spool_retention_h: float = Field(default=72.0, gt=0, le=24 * 90)
