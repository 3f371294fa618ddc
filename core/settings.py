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
    schedule_catchup_window_seconds: int = Field(
        default=3600,
        ge=10,
        description="How late a schedule's firing, missed while Temporal was down, still runs.",
    )
    housekeeping_interval_seconds: int = Field(
        default=300,
        ge=10,
        description="How often the worker's housekeeping schedule runs: it settles tasks whose "
        "workflow ended in Temporal without recording it, and prunes old records.",
    )
    request_log_retention_days: int = Field(
        default=30, ge=1, description="How long a request log row is kept."
    )
    default_context_tokens: int = Field(default=32_000, ge=256)
    session_idle_seconds: float = Field(default=3600.0, gt=0)
    rate_limit_per_minute: int = Field(
        default=600, ge=0, description="Requests per minute per API key; 0 disables the limit."
    )
    max_request_bytes: int = Field(default=1024 * 1024, ge=1, description="Largest request body.")
    max_prompt_chars: int = Field(default=100_000, ge=1, description="Longest task prompt.")
    max_running_tasks_per_user: int = Field(
        default=20, ge=0, description="Tasks a user may have unfinished at once; 0: no limit."
    )
    encryption_keys: SecretStr | None = Field(
        default=None,
        description="Temporal payload keys, `id:base64key` pairs separated by commas; unset: off.",
    )
    encryption_key_id: str | None = Field(
        default=None, description="The key (by id) that encrypts new payloads."
    )
    codec_cors_origins: list[str] | None = Field(
        default=None,
        description="Origins (the Temporal Web UI) allowed to call the codec endpoint; unset: "
        "the dev Web UI's, on localhost and 127.0.0.1 at temporal_ui_port.",
    )

    @property
    def codec_origins(self) -> list[str]:
        if self.codec_cors_origins is not None:
            return self.codec_cors_origins
        return [f"http://{host}:{self.temporal_ui_port}" for host in ("localhost", "127.0.0.1")]

    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Prometheus endpoint of the worker; unset: none for `keel worker`, "
        "9464 for `keel dev`; 0: none.",
    )
    worker_max_activities: int = Field(
        default=500,
        ge=1,
        description="Activities one worker runs at once. Claude calls mostly wait on the "
        "network, so this is well above Temporal's default of 100.",
    )
    worker_max_cached_workflows: int = Field(
        default=1000,
        ge=0,
        description="Workflow runs a worker keeps in memory (about 150 KB each for a parked "
        "task); beyond it the least recently used is evicted and replayed when it next wakes.",
    )
    tracing: bool = Field(
        default=False,
        description="OpenTelemetry tracing through Temporal's interceptor (the `tracing` extra).",
    )
    telegram_bot_token: SecretStr | None = Field(
        default=None, description="The bot's token from @BotFather; unset: no Telegram."
    )
    telegram_base_url: str = Field(
        default="https://api.telegram.org/bot",
        description="python-telegram-bot's base_url: a self-hosted Bot API server or a stand-in.",
    )
    telegram_webhook_url: str | None = Field(
        default=None, description="Public HTTPS URL Telegram posts updates to; unset: polling."
    )
    telegram_webhook_secret: SecretStr | None = Field(
        default=None, description="Checked against X-Telegram-Bot-Api-Secret-Token (webhook mode)."
    )
    telegram_webhook_host: str = "127.0.0.1"
    telegram_webhook_port: int = 8443

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
