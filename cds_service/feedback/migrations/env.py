"""Alembic environment: migrations run on the connection the store hands over (config.attributes), inside
its transaction, so the store decides about locking and the URL never goes through alembic.ini.

A new migration is a new file in versions/ whose down_revision is the current head; check it with
tests/test_feedback_store.py (the migrated schema must equal models.py)."""
from alembic import context

from cds_service.feedback.models import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata,
                  transactional_ddl=True)  # so on SQLite too: the store opens every transaction with BEGIN
with context.begin_transaction():
    context.run_migrations()
