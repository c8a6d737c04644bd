"""sample_stats at fill factor 40 on PostgreSQL: every epoch's rewrite stays on its page (HOT)

Each epoch rewrites every row of ``sample_stats``. At the default fill factor
(100) a page has no room for a row's new version, so each update went to another
page and added an index entry: after 3 epochs of 10^6 samples the table was 3.2x
its live rows, and only VACUUM could reclaim it. With 60% of each page kept free
when rows are inserted, the new version of every row fits beside the old one
(a heap-only tuple: no index entry), and the next write prunes the old versions
on the page before it updates them, with or without autovacuum: the table stays
at ~1.7x its live rows (docs/postgres.md). SQLite is unchanged (it rewrites in
place).

Existing pages keep their layout until rows move; ``VACUUM FULL sample_stats``
(or pg_repack) rewrites an existing table at the new fill factor at once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 05:10:00
"""
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE sample_stats SET (fillfactor = 40)')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE sample_stats RESET (fillfactor)')
