"""Settings of the manholes service beyond the platform's (`CITYOS_MANHOLES_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ManholesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOS_MANHOLES_", extra="ignore", frozen=True)

    # -- risk --------------------------------------------------------------------------------------
    # The clients (the `azp` of their service-account tokens) allowed to write risk scores: the
    # analytics job's service account. The role `service` alone is not enough, since every service
    # holds it. A JSON list in the environment, e.g. `["cityos-analytics"]`.
    risk_writers: frozenset[str] = frozenset({"cityos-analytics"})
    # How often covers the analytics job has not scored get a score from their alarm history.
    history_interval_s: float = Field(default=300.0, gt=0, le=86400)
