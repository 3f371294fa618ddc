"""The `keel` command line."""

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

import typer
import uvloop
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.api_keys import create_api_key, list_api_keys, revoke_api_key
from core.db import create_engine, database_url, migrate, session_factory, session_scope
from core.encryption import generate_key
from core.logging import configure_logging
from core.records import create_user
from core.settings import Settings, get_settings
from schemas.tables import User

app = typer.Typer(help="Keel: durable AI agents on Temporal.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users and their API keys.", no_args_is_help=True)
app.add_typer(users_app, name="users")
keys_app = typer.Typer(help="List, create and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _setup() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` on uvloop; SIGINT or SIGTERM sets `stop` so it can shut down cleanly.

    uvloop, not asyncio's own loop: its loop and transports are native code, which the API's
    request handling gains from (see `workers.api_server`)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(runner())


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


@app.command("encryption-key")
def encryption_key() -> None:
    """Print a new random AES-256 key for KEEL_ENCRYPTION_KEYS (as `id:<this key>`)."""
    typer.echo(generate_key())


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


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at is not None else "-"


async def _user_named(session: AsyncSession, name: str, command: str) -> User:
    user = (await session.exec(select(User).where(User.name == name))).first()
    if user is None:
        typer.echo(f"keel keys {command}: no user named {name!r}", err=True)
        raise typer.Exit(1)
    return user


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None,
) -> None:
    """List API keys (never their secrets): id, user, prefix, name, created, last used, revoked."""
    settings = _setup()

    async def work(session: AsyncSession) -> None:
        owner = await _user_named(session, user, "list") if user is not None else None
        names = {row.id: row.name for row in await session.exec(select(User))}
        for key in await list_api_keys(session, owner.id if owner else None):
            revoked = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active"
            typer.echo(
                f"{key.id}  {names[key.user_id]}  {key.prefix}...  {key.name or '-'}  "
                f"created {_when(key.created_at)}  last used {_when(key.last_used_at)}  {revoked}"
            )

    asyncio.run(_with_session(settings, work))


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="The user who gets the key.")],
    name: Annotated[str, typer.Option("--name", help="A label for the key.")] = "",
) -> None:
    """Create an API key for a user. The key is printed once, alone on the last line."""
    settings = _setup()

    async def work(session: AsyncSession) -> None:
        owner = await _user_named(session, user, "create")
        key, secret = await create_api_key(session, owner.id, name)
        typer.echo(f"created key {key.id} for {owner.name}; API key (shown once):")
        typer.echo(secret)

    asyncio.run(_with_session(settings, work))


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    settings = _setup()

    async def work(session: AsyncSession) -> None:
        key = await revoke_api_key(session, key_id)
        if key is None:
            typer.echo(f"keel keys revoke: no API key {key_id}", err=True)
            raise typer.Exit(1)
        typer.echo(f"revoked key {key.id} ({key.prefix}...) at {_when(key.revoked_at)}")

    asyncio.run(_with_session(settings, work))
