"""One settings object for every Keel process, read from `KEEL_*` environment variables."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Keel's settings. Temporal's own connection settings (`TEMPORAL_ADDRESS`,
    `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, TLS...) are read by Temporal's standard
    client configuration, not here; Anthropic's by the `anthropic` SDK."""

    model_config = SettingsConfigDict(env_prefix="KEEL_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".keel"), description="Where embedded state lives.")
    agents_file: Path | None = Field(default=None, description="Agent profiles (TOML).")
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of Keel's Postgres; unset means embedded Postgres in <home>/pg.",
    )
    task_queue: str = "keel"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    log_level: str = "INFO"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    default_model: str = "claude-sonnet-5-5"
    default_max_steps: int = Field(default=20, ge=1)
    default_max_tokens: int = Field(default=200_000, ge=1)
    llm_max_output_tokens: int = Field(default=4096, ge=1)
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Prometheus endpoint of the worker; unset: none for `keel worker`, "
        "9464 for `keel dev`; 0: none.",
    )
    tracing: bool = Field(
        default=False,
        description="OpenTelemetry tracing through Temporal's interceptor (the `tracing` extra).",
    )

    @property
    def embedded_pg_dir(self) -> Path:
        return self.home / "pg"

    @property
    def temporal_db_file(self) -> Path:
        return self.home / "temporal.db"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
