"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 14:16:45.083131
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blobs',
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('hash', name=op.f('pk_blobs'))
    )
    op.create_table('experiments',
    sa.Column('experiment_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recipe', sa.String(length=500), nullable=True),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('experiment_id', name=op.f('pk_experiments')),
    sa.UniqueConstraint('name', name=op.f('uq_experiments_name'))
    )
    op.create_table('blob_contents',
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['hash'], ['blobs.hash'], name=op.f('fk_blob_contents_hash_blobs')),
    sa.PrimaryKeyConstraint('hash', name=op.f('pk_blob_contents'))
    )
    op.create_table('events',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('prev_seq', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state_hash', sa.String(length=64), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('code_version', sa.String(length=100), nullable=False),
    sa.Column('idempotency_key', sa.String(length=64), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=True),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.CheckConstraint('(seq = 1 AND prev_seq IS NULL) OR (prev_seq = seq - 1)', name=op.f('ck_events_seq_gap_free')),
    sa.CheckConstraint('seq >= 1', name=op.f('ck_events_seq_positive')),
    sa.ForeignKeyConstraint(['experiment_id', 'prev_seq'], ['events.experiment_id', 'events.seq'], name='fk_events_prev_seq_events'),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'], name=op.f('fk_events_experiment_id_experiments')),
    sa.PrimaryKeyConstraint('experiment_id', 'seq', name=op.f('pk_events')),
    sa.UniqueConstraint('experiment_id', 'idempotency_key', name='uq_events_idempotency_key')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_kind', ['experiment_id', 'kind'], unique=False)

    op.create_table('neuron_stats',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('layer_index', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('neuron_index', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('layer_name', sa.String(length=200), nullable=False),
    sa.Column('trigger_count', sa.BigInteger(), nullable=False),
    sa.Column('seen_samples', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'], name=op.f('fk_neuron_stats_experiment_id_experiments')),
    sa.PrimaryKeyConstraint('experiment_id', 'layer_index', 'neuron_index', 'split', name=op.f('pk_neuron_stats'))
    )
    op.create_table('sample_stats',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('sample_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('prediction_age', sa.BigInteger(), nullable=True),
    sa.Column('prediction_loss', sa.Float(), nullable=True),
    sa.Column('exposure_amount', sa.Integer(), nullable=False),
    sa.Column('deny_listed', sa.Boolean(), nullable=False),
    sa.Column('prediction', sa.Integer(), nullable=True),
    sa.Column('label', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'], name=op.f('fk_sample_stats_experiment_id_experiments')),
    sa.PrimaryKeyConstraint('experiment_id', 'split', 'sample_id', name=op.f('pk_sample_stats'))
    )
    with op.batch_alter_table('sample_stats', schema=None) as batch_op:
        batch_op.create_index('ix_sample_stats_loss', ['experiment_id', 'split', 'prediction_loss'], unique=False)

    op.create_table('snapshots',
    sa.Column('snapshot_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('table_name', sa.String(length=40), nullable=False),
    sa.Column('event_seq', sa.Integer(), nullable=False),
    sa.Column('blob_hash', sa.String(length=64), nullable=False),
    sa.Column('rows', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['blob_hash'], ['blobs.hash'], name=op.f('fk_snapshots_blob_hash_blobs')),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'], name=op.f('fk_snapshots_experiment_id_experiments')),
    sa.PrimaryKeyConstraint('snapshot_id', name=op.f('pk_snapshots'))
    )
    op.create_table('checkpoints',
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('checkpoint_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('event_seq', sa.Integer(), nullable=False),
    sa.Column('manifest_hash', sa.String(length=64), nullable=False),
    sa.Column('model_age', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id', 'event_seq'], ['events.experiment_id', 'events.seq'], name='fk_checkpoints_event_seq_events'),
    sa.ForeignKeyConstraint(['experiment_id', 'parent_id'], ['checkpoints.experiment_id', 'checkpoints.checkpoint_id'], name='fk_checkpoints_parent_checkpoints'),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'], name=op.f('fk_checkpoints_experiment_id_experiments')),
    sa.ForeignKeyConstraint(['manifest_hash'], ['blobs.hash'], name=op.f('fk_checkpoints_manifest_hash_blobs')),
    sa.PrimaryKeyConstraint('experiment_id', 'checkpoint_id', name=op.f('pk_checkpoints'))
    )


def downgrade() -> None:
    op.drop_table('checkpoints')
    op.drop_table('snapshots')
    with op.batch_alter_table('sample_stats', schema=None) as batch_op:
        batch_op.drop_index('ix_sample_stats_loss')

    op.drop_table('sample_stats')
    op.drop_table('neuron_stats')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_kind')

    op.drop_table('events')
    op.drop_table('blob_contents')
    op.drop_table('experiments')
    op.drop_table('blobs')
