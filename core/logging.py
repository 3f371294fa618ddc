"""structlog configured once per process; stdlib and Temporal loggers render through it."""

import logging
import re
import sys

import structlog
from temporalio import activity, workflow

_SECRET_KEYS = ("api_key", "authorization", "token", "password", "secret")


def _clean_event(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Blank any field whose name says it holds a secret, so keys never reach logs, and
    drop uvicorn's terminal-colour duplicate of the message."""
    event.pop("color_message", None)
    for key in event:
        if any(marker in key.lower() for marker in _SECRET_KEYS):
            event[key] = "[redacted]"
    return event


def _lift_temporal_ids(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Temporal's workflow and activity loggers put their details (workflow_id, run_id,
    activity_id, ...) in one nested dict; lift them to the top level, beside the API's
    request_id and user_id, so one filter finds every line of a task."""
    for key in ("temporal_workflow", "temporal_activity"):
        details = event.pop(key, None)
        if isinstance(details, dict):
            for name, value in details.items():
                event.setdefault(name, value)
    return event


# A Telegram bot token (`<bot id>:<35 characters>`): the Bot API puts it in every URL, and
# python-telegram-bot and httpx write URLs and errors to the log.
_TELEGRAM_TOKEN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}")


def _redact_tokens(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Blank anything shaped like a bot token in the rendered fields (tracebacks included)."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = _TELEGRAM_TOKEN.sub("[redacted-token]", value)
    return event


def configure_logging(level: str = "INFO", log_format: str = "auto") -> None:
    """Route structlog and stdlib logging (Temporal's workflow and activity loggers
    included) through one renderer: JSON off a TTY, readable lines on one."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _lift_temporal_ids,
        _clean_event,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact_tokens,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The HTTP clients log every request line (Anthropic's SDK uses httpx2); warnings only.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # Temporal's loggers put workflow and activity info in `extra`; keep messages plain.
    activity.logger.activity_info_on_message = False
    workflow.logger.workflow_info_on_message = False
