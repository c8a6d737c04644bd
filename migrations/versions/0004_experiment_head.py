"""experiments.head_seq / head_hash: the log's head, anchored where truncation shows

Every append writes the seq and hash of the new event on its experiment's row in
the same transaction; deleting the newest events then leaves a log that ends
before its head. Existing experiments get the head of their current log.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('head_seq', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('head_hash', sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE experiments SET "
        "head_seq = COALESCE((SELECT MAX(e.seq) FROM events e WHERE e.experiment_id = experiments.experiment_id), 0), "
        "head_hash = (SELECT e.hash FROM events e WHERE e.experiment_id = experiments.experiment_id "
        "AND e.seq = (SELECT MAX(f.seq) FROM events f WHERE f.experiment_id = experiments.experiment_id))"
    )


def downgrade() -> None:
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_column('head_hash')
        batch_op.drop_column('head_seq')
