"""drop the prediction_loss index of sample_stats

Every training epoch upserts every sample's row; maintaining the index on
prediction_loss made that about 1.7x slower, while a top-100-by-loss query
over a million rows stays under 100 ms without it (tools/bench.py).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 16:05:00
"""
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sample_stats', schema=None) as batch_op:
        batch_op.drop_index('ix_sample_stats_loss')


def downgrade() -> None:
    with op.batch_alter_table('sample_stats', schema=None) as batch_op:
        batch_op.create_index('ix_sample_stats_loss', ['experiment_id', 'split', 'prediction_loss'], unique=False)
