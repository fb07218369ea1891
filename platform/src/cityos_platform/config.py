"""Typed configuration from the environment (`CITYOS_*`), validated at start.

Every setting has a safe embedded default; production overrides them through environment variables
set by the Helm chart. A bad value stops the process with a message that names the variable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

ENV_PREFIX = "CITYOS_"
# A service name and a `host:port` address (a DNS name, an IPv4 address or a bracketed IPv6 one).
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):(\d{1,5})$")


class ConfigError(Exception):
    """The configuration is invalid; the message names every offending variable."""


class Settings(BaseSettings):
    """Runtime settings shared by every service process."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Where the process runs.
    mode: Literal["embedded", "production"] = "embedded"
    var_dir: Path = Path("var")

    # gRPC listener.
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    # Unary calls: a default deadline when the client sets none, and a concurrency limit.
    unary_deadline_s: float = Field(default=10.0, gt=0, le=600)
    unary_concurrency: int = Field(default=256, ge=1, le=100_000)

    # Long-lived streams: caps per caller and in total, for each stream class.
    stream_cap_per_caller: int = Field(default=16, ge=1, le=100_000)
    stream_cap_total: int = Field(default=1024, ge=1, le=1_000_000)

    # Graceful shutdown: health turns NOT_SERVING, after `drain_delay_s` new calls are refused,
    # in-flight calls get `grace_s` to finish.
    drain_delay_s: float = Field(default=0.0, ge=0, le=60)
    grace_s: float = Field(default=10.0, ge=0, le=300)

    # Worker processes serving the same port (SO_REUSEPORT), each running the whole service: gRPC in
    # Python runs one core per process, so a CPU-bound service on a pod with N cores serves N workers.
    # `cityos serve` supervises them (the first starts alone and migrates; the rest join once it is
    # up); needs a fixed `port`. `worker_index` is set by the supervisor for each worker (None: not a
    # worker); services run their singleton background work in worker 0 only.
    workers: int = Field(default=1, ge=1, le=64)
    worker_index: int | None = Field(default=None, ge=0, le=63)

    # TLS: a certificate and key enable TLS; a client CA enables mutual TLS (client certificate required).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    # Storage: a SQLAlchemy URL (postgresql://… in production); empty means SQLite under var/db/.
    database_url: str = ""
    # How often an event stream polls for commits made by other replicas (its own wake it at once).
    events_poll_interval_s: float = Field(default=1.0, gt=0, le=60)

    # Callers: OIDC bearer tokens from this issuer (Keycloak's realm URL in production; the embedded
    # default is the development issuer `cityos dev` runs), for this audience.
    auth_issuer: str = "http://127.0.0.1:8099/realms/cityos"
    auth_audience: str = "cityos"
    # Empty: the issuer's `/protocol/openid-connect/certs` (Keycloak's path; the dev issuer serves it too).
    auth_jwks_url: str = ""
    # Further issuers trusted for service and API-key principals only (never for people): the identity
    # service's URL for the API-key tokens it issues (JSON list). Each serves its JWKS at
    # `<issuer>/protocol/openid-connect/certs`.
    auth_extra_issuers: list[str] = Field(default_factory=list)
    auth_leeway_s: float = Field(default=30.0, ge=0, le=300)
    auth_jwks_refresh_s: float = Field(default=30.0, ge=1, le=3600)

    # Calls to other services (`cityos_platform.peers`): where each answers (JSON, service name ->
    # `host:port`; the chart and `cityos dev` set it), and this service's own OAuth2 client for the
    # client-credentials grant. Empty id: `cityos-<service>` (the realm's confidential client); no
    # secret: the service makes no calls to the others. Empty token URL: the issuer's
    # `/protocol/openid-connect/token` (Keycloak's path; the dev issuer serves it too).
    endpoints: dict[str, str] = Field(default_factory=dict)
    auth_client_id: str = Field(default="", max_length=255)
    auth_client_secret: SecretStr = SecretStr("")
    auth_token_url: str = ""

    # Page tokens are signed with this secret (shared by a service's replicas); empty in embedded mode
    # means a key created once under var/secrets/.
    page_token_secret: SecretStr = SecretStr("")

    # The access log's folder (one hash-chained file per service); empty means var/audit.
    access_log_dir: Path | None = None

    # Logs.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        for name, address in value.items():
            match = _ADDRESS.match(address)
            if not _SERVICE_NAME.match(name):
                problems.append(f"{name!r} is not a service name ([a-z][a-z0-9-]*)")
            elif match is None or not 1 <= int(match.group(3)) <= 65535:
                problems.append(f"{name}: {address!r} is not host:port")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(f"{ENV_PREFIX}TLS_CERT_FILE and {ENV_PREFIX}TLS_KEY_FILE must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(f"{ENV_PREFIX}TLS_CLIENT_CA_FILE needs {ENV_PREFIX}TLS_CERT_FILE and _KEY_FILE")
        for field in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            path = getattr(self, field)
            if path is not None and not path.is_file():
                raise ValueError(f"{ENV_PREFIX}{field.upper()}: no such file: {path}")
        return self

    @model_validator(mode="after")
    def _production_needs(self) -> Settings:
        if self.mode == "production":
            # The database URL is checked where a service asks for it (`database_url_for`): a process
            # without a database of its own (the lake exporter) needs none.
            missing = [
                name
                for name, value in (("PAGE_TOKEN_SECRET", self.page_token_secret.get_secret_value()),)
                if not value
            ]
            if missing:
                raise ValueError("production mode needs " + ", ".join(ENV_PREFIX + name for name in missing))
        return self

    @property
    def jwks_url(self) -> str:
        return self.auth_jwks_url or self.auth_issuer.rstrip("/") + "/protocol/openid-connect/certs"

    @property
    def token_url(self) -> str:
        """Where this service asks for its client-credentials token."""
        return self.auth_token_url or self.auth_issuer.rstrip("/") + "/protocol/openid-connect/token"

    def client_id_for(self, service: str) -> str:
        """This service's OAuth2 client: `CITYOS_AUTH_CLIENT_ID`, else the realm's `cityos-<service>`."""
        return self.auth_client_id or f"cityos-{service}"

    @property
    def runs_singletons(self) -> bool:
        """Whether this process runs the service's background work that one process does per replica
        (a feed follower, sweeps): yes unless it is a worker other than the first."""
        return self.worker_index in (None, 0)

    def database_url_for(self, service: str) -> str:
        """`CITYOS_DATABASE_URL`; in the embedded mode, else a SQLite file under the var dir. Production
        mode has no such default: a service with a database needs the variable (ConfigError)."""
        if self.database_url:
            return self.database_url
        if self.mode == "production":
            raise ConfigError(f"production mode needs {ENV_PREFIX}DATABASE_URL for the {service} database")
        return f"sqlite+aiosqlite:///{(self.var_dir / 'db' / f'{service}.sqlite').resolve()}"

    def access_log_path(self, service: str) -> Path:
        return (self.access_log_dir or self.var_dir / "audit") / f"access-{service}.jsonl"

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "__root__"]
        message = item.get("msg", "invalid").removeprefix("Value error, ")
        if location:
            variable = ENV_PREFIX + "_".join(location).upper()
            value = item.get("input")
            shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
            lines.append(f"{variable}: {message}{shown}")
        else:
            lines.append(message)
    return "invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (and `overrides`), or raise ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None
    except SettingsError as error:  # a structured variable (a list, a map) that is not JSON
        field = re.search(r'field "(\w+)"', str(error))
        variable = ENV_PREFIX + field.group(1).upper() if field else "a CITYOS_* variable"
        raise ConfigError(f"invalid configuration: {variable}: not valid JSON") from None
