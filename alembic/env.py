"""Alembic environment: the URL comes from tuna's settings, or from the caller."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from tuna.config import load_settings
from tuna.db.engine import Database, make_engine
from tuna.db.schema import ensure_database

config = context.config
if config.config_file_name is not None and not config.attributes.get("connection"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    settings = load_settings()
    db = Database(settings)
    ensure_database(db)
    engine = make_engine(settings.db_url)
    with engine.connect() as conn:
        context.configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("tuna's migrations run online only: alembic upgrade head")
run_migrations_online()
