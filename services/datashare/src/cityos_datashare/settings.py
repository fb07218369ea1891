"""Settings of the datashare service beyond the platform's (`CITYOS_DATASHARE_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatashareSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOS_DATASHARE_", extra="ignore", frozen=True)

    # -- the HTTP listener (NGSI-LD API; extract downloads from a local-folder lake) ---------------------
    http_host: str = "127.0.0.1"
    # 0 picks a free port. In the embedded city the launcher picks it (50076 unless busy) and shows it.
    http_port: int = Field(default=50076, ge=0, le=65535)
    # The base URL clients reach the HTTP listener at (download links are built on it); empty: the
    # listener's own http://host:port.
    public_url: str = ""

    # -- reads ------------------------------------------------------------------------------------------
    # Rows per Arrow batch of a Query stream (each is one message, so this bounds the message size).
    batch_rows: int = Field(default=10_000, ge=1, le=1_000_000)
    # The most rows (or groups) one Query or Export returns.
    max_rows: int = Field(default=5_000_000, ge=1, le=1_000_000_000)
    # How long an export's download URL lasts unless the request says (s), and the longest allowed.
    export_url_ttl_s: int = Field(default=900, ge=10, le=3600)
    # Approved agreements past their expire time are marked EXPIRED this often (reads check the time
    # themselves; the sweep records the transition and deletes the exports).
    expiry_sweep_s: float = Field(default=30.0, gt=0, le=3600)

    # -- open data -------------------------------------------------------------------------------------
    # Requests per second each client may make to the open-data API (token bucket, burst = rate).
    open_data_rate_per_s: float = Field(default=10.0, gt=0, le=10_000)

    # -- receipts ----------------------------------------------------------------------------------------
    # The Ed25519 private key (PEM, PKCS#8) receipts are signed with. Empty in embedded mode: a key
    # created once under var/secrets/; production needs it (replicas share it).
    receipt_signing_key: SecretStr = SecretStr("")
    # Earlier keys' public halves (PEM), so receipts signed before a rotation still verify.
    receipt_previous_public_keys: list[str] = Field(default_factory=list)

    # -- live views --------------------------------------------------------------------------------------
    # The NGSI-LD entity types served, by the service whose NgsiLdService serves them.
    live_view_services: tuple[str, ...] = ("parking", "streetlights")


def receipt_key_path(var_dir: Path) -> Path:
    return var_dir / "secrets" / "datashare-receipts.pem"
