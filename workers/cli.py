"""The `keel` command line."""

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer
from sqlmodel import col, select

from core.db import create_engine, database_url, migrate, session_factory, session_scope
from core.logging import configure_logging
from core.records import create_user
from core.settings import Settings, get_settings
from schemas.tables import User

app = typer.Typer(help="Keel: durable AI agents on Temporal.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users and their API keys.", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _setup() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)`; SIGINT or SIGTERM sets `stop` so it can shut down cleanly."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


@app.command()
def dev() -> None:
    """Start everything on embedded defaults: Temporal dev server (Web UI on :8233),
    embedded Postgres, migrations, worker and API, and the Telegram bot when
    KEEL_TELEGRAM_BOT_TOKEN is set. State is kept in KEEL_HOME (.keel)."""
    from workers.dev import PortTaken, run_dev

    settings = _setup()
    try:
        _run_until_signal(lambda stop: run_dev(settings, stop))
    except PortTaken as exc:
        typer.echo(f"keel dev: {exc}; stop whatever uses it or change the port setting", err=True)
        raise typer.Exit(1) from None


@app.command()
def worker() -> None:
    """Run a Temporal worker for every Keel workflow and activity."""
    from workers.worker import run_worker

    settings = _setup()
    url = database_url(settings)
    _run_until_signal(lambda stop: run_worker(settings, url, stop))


@app.command()
def api() -> None:
    """Serve the REST API on KEEL_API_HOST:KEEL_API_PORT."""
    from workers.api_server import run_api

    settings = _setup()
    url = database_url(settings)
    _run_until_signal(lambda stop: run_api(settings, url, stop))


@app.command()
def telegram() -> None:
    """Run the Telegram bot (KEEL_TELEGRAM_BOT_TOKEN): long polling, or a webhook when
    KEEL_TELEGRAM_WEBHOOK_URL is set."""
    from workers.telegram import run_telegram

    settings = _setup()
    if settings.telegram_bot_token is None:
        typer.echo("keel telegram: set KEEL_TELEGRAM_BOT_TOKEN (from @BotFather)", err=True)
        raise typer.Exit(1)
    url = database_url(settings)
    _run_until_signal(lambda stop: run_telegram(settings, url, stop))


@app.command("migrate")
def migrate_command() -> None:
    """Apply the database migrations."""
    settings = _setup()
    migrate(database_url(settings))
    typer.echo("database is at the newest schema")


async def _with_session(settings: Settings, work: Callable[..., Awaitable[None]]) -> None:
    url = database_url(settings)
    migrate(url)
    engine = create_engine(url)
    try:
        async with session_scope(session_factory(engine)) as session:
            await work(session)
    finally:
        await engine.dispose()


@users_app.command("create")
def users_create(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="May list across users.")] = False,
) -> None:
    """Create a user and an API key. The key is printed once, alone on the last line."""
    settings = _setup()

    async def work(session: object) -> None:
        try:
            user, key = await create_user(session, name, is_admin=admin)  # type: ignore[arg-type]
        except ValueError as exc:
            typer.echo(f"keel users create: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"created user {user.name} ({user.id}); API key (shown once):")
        typer.echo(key)

    asyncio.run(_with_session(settings, work))


@users_app.command("list")
def users_list() -> None:
    """List users."""
    settings = _setup()

    async def work(session: object) -> None:
        rows = await session.exec(select(User).order_by(col(User.created_at)))  # type: ignore[attr-defined]
        for user in rows:
            role = "admin" if user.is_admin else "user"
            typer.echo(f"{user.id}  {user.name}  {role}  {user.created_at:%Y-%m-%d %H:%M}")

    asyncio.run(_with_session(settings, work))
