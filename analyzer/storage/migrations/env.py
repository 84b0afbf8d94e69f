"""Alembic environment of the results store, configured programmatically by ``Store.migrate``.

The caller passes an open connection in ``config.attributes["connection"]``; there is no
alembic.ini and no URL here, so the same code migrates SQLite files and PostgreSQL schemas.
Alembic's ``migration tutorial`` (env.py "connection sharing" recipe).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from analyzer.storage.models import Base

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through analyzer.storage.Store.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: later revisions use batch mode (copy and move).
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
