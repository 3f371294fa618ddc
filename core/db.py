"""The database: where it is (a real URL or embedded Postgres), engines and migrations."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel.ext.asyncio.session import AsyncSession

from core.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in `data_dir` and return its SQLAlchemy URL.
    The server is shared by every Keel process using that directory and stops with the last."""
    import pgserver  # imported here: only the embedded default needs it

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir)
    return server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)


def database_url(settings: Settings) -> str:
    """`KEEL_DATABASE_URL` when set, else the embedded Postgres under Keel's home."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return start_embedded_postgres(settings.embedded_pg_dir.resolve())


def create_engine(url: str, **options: Any) -> AsyncEngine:
    """The async engine; `options` go to SQLAlchemy as they are, over these defaults.

    No `pool_pre_ping`: it costs a round trip on every checkout, and a connection that died
    (Postgres restarted) fails its one statement, invalidates the pool, and the work is
    retried (an activity by Temporal, a request by its client after a 503). Connections are
    recycled before servers or proxies drop them as idle. Twenty stay open: one opened past
    the pool's size is closed as soon as it is returned, and under 50 concurrent API
    requests a pool of 10 opened and closed one (a Postgres backend forked and torn down)
    for most requests. At most 30 per engine, as before, within Postgres' default 100."""
    defaults: dict[str, Any] = {"pool_size": 20, "max_overflow": 10, "pool_recycle": 1800}
    return create_async_engine(url, **(defaults | options))


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session that commits on success and rolls back on error."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


@asynccontextmanager
async def autocommit(
    factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncConnection]:
    """A pooled connection on which each statement commits by itself, sparing BEGIN's and
    COMMIT's round trips: for work one statement does whole (with its data-modifying CTEs,
    still one atomic statement)."""
    engine: AsyncEngine = factory.kw["bind"]  # the engine, without a session's bookkeeping
    async with engine.connect() as connection:
        yield await connection.execution_options(isolation_level="AUTOCOMMIT")


def migrate(url: str) -> None:
    """Apply every Alembic migration up to head."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")
