"""requests: edits asked of an experiment from outside its process, applied at its safe points

A queue per experiment (the CLI's ``weightslab request``, the UI's buttons): the
process that holds the experiment claims each pending request in order, applies it
through the same API a script calls, and records it as an ordinary event (actor:
the requester) in the transaction that marks the request applied; a request the API
refuses is marked refused with its message. See docs/requests.md.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 22:30:00
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'requests',
        sa.Column('request_id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('experiment_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=40), nullable=False),
        sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
                  nullable=False),
        sa.Column('requested_by', sa.String(length=200), nullable=False),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
        sa.Column('applied_seq', sa.Integer(), nullable=True),
        sa.Column('error', sa.String(length=2000), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'applying', 'applied', 'refused', 'cancelled')",
                           name=op.f('ck_requests_status_known')),
        sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'],
                                name=op.f('fk_requests_experiment_id_experiments')),
        sa.PrimaryKeyConstraint('request_id', name=op.f('pk_requests')),
    )
    op.create_index('ix_requests_queue', 'requests', ['experiment_id', 'status', 'request_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_requests_queue', table_name='requests')
    op.drop_table('requests')
