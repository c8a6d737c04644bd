"""The SQL schema of a WeightsLab store: the one place it is defined.

Alembic revisions in ``migrations/versions`` are generated from these models
and a test proves the two never drift. Table and column names here are the
public SQL surface (SPEC §4): users write queries against them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "Blob",
    "BlobContent",
    "Checkpoint",
    "Event",
    "Experiment",
    "NeuronStat",
    "Request",
    "SampleStat",
    "Snapshot",
]

# Constraint names are deterministic so that migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Payloads are JSON; on PostgreSQL, JSONB so that users can index and query them.
JsonPayload = JSON().with_variant(JSONB(), "postgresql")
HASH = String(64)  # SHA-256, lowercase hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Experiment(Base):
    """One experiment: a named, append-only history."""

    __tablename__ = "experiments"

    experiment_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # How to rebuild the model and data sets ("package.module:function"), if recorded.
    recipe: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # Constructor settings and data set fingerprints, as recorded at creation.
    config: Mapped[dict | None] = mapped_column(JsonPayload, nullable=True)
    # The log's head: seq and hash of its latest event, written in the same transaction as that event,
    # so a log cut short (its newest events deleted) no longer ends where its head says (revision 0004).
    head_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    head_hash: Mapped[str | None] = mapped_column(HASH, nullable=True)


class Event(Base):
    """The event log: one row per operation, a gap-free hash chain per experiment.

    ``seq`` runs 1, 2, ... per experiment. The database itself refuses a gap or
    a duplicate: (experiment_id, seq) is the primary key and every event but the
    first must point at its predecessor ``prev_seq = seq - 1``, which must exist.
    """

    __tablename__ = "events"
    __table_args__ = (
        ForeignKeyConstraint(
            ["experiment_id", "prev_seq"],
            ["events.experiment_id", "events.seq"],
            name="fk_events_prev_seq_events",
        ),
        CheckConstraint("seq >= 1", name="seq_positive"),
        CheckConstraint(
            "(seq = 1 AND prev_seq IS NULL) OR (prev_seq = seq - 1)", name="seq_gap_free"
        ),
        UniqueConstraint("experiment_id", "idempotency_key", name="uq_events_idempotency_key"),
        Index("ix_events_kind", "experiment_id", "kind"),
    )

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.experiment_id"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    prev_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kind: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict] = mapped_column(JsonPayload)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Fingerprint of the experiment state right after this event (model, optimizer, ledger).
    state_hash: Mapped[str | None] = mapped_column(HASH, nullable=True)
    actor: Mapped[str] = mapped_column(String(200))  # user@host
    code_version: Mapped[str] = mapped_column(String(100))  # weightslab version [+ git rev]
    idempotency_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prev_hash: Mapped[str | None] = mapped_column(HASH, nullable=True)
    hash: Mapped[str] = mapped_column(HASH)


class SampleStat(Base):
    """Per-sample statistics as of the experiment's last event."""

    __tablename__ = "sample_stats"
    # No index on prediction_loss: every epoch rewrites every row, and the index doubled that
    # cost; a top-100-by-loss query scans the experiment's rows in key order instead (revision 0002).
    # On SQLite the rows live in the primary-key B-tree itself (WITHOUT ROWID, revision 0003): that
    # scan reads one tree in order instead of following an index into a second one (~1.45x faster
    # at 10^6 rows), and an upsert updates one tree.
    # On PostgreSQL pages are filled to 40% (revision 0006): an epoch's update of a row then finds room for the
    # new version on the same page (HOT: no index entry) and the next write prunes the old one there, so the
    # table stays under 2x its live rows without VACUUM (docs/postgres.md).
    __table_args__ = {"sqlite_with_rowid": False, "postgresql_with": {"fillfactor": 40}}

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.experiment_id"), primary_key=True
    )
    split: Mapped[str] = mapped_column(String(16), primary_key=True)
    sample_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    prediction_age: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    prediction_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    exposure_amount: Mapped[int] = mapped_column(Integer)
    deny_listed: Mapped[bool] = mapped_column(Boolean)
    prediction: Mapped[int | None] = mapped_column(Integer, nullable=True)
    label: Mapped[int | None] = mapped_column(Integer, nullable=True)


class NeuronStat(Base):
    """Per-neuron trigger counters as of the experiment's last event."""

    __tablename__ = "neuron_stats"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.experiment_id"), primary_key=True
    )
    layer_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    neuron_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    split: Mapped[str] = mapped_column(String(16), primary_key=True)
    layer_name: Mapped[str] = mapped_column(String(200))
    trigger_count: Mapped[int] = mapped_column(BigInteger)
    seen_samples: Mapped[int] = mapped_column(BigInteger)


class Blob(Base):
    """A content-addressed blob: ``hash`` is the SHA-256 of its bytes."""

    __tablename__ = "blobs"

    hash: Mapped[str] = mapped_column(HASH, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BlobContent(Base):
    """Blob bytes, for stores that keep blobs in the database (PostgreSQL by default)."""

    __tablename__ = "blob_contents"

    hash: Mapped[str] = mapped_column(ForeignKey("blobs.hash"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Checkpoint(Base):
    """A checkpoint: a manifest blob naming every tensor's blob, and its place in the tree."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        ForeignKeyConstraint(
            ["experiment_id", "parent_id"],
            ["checkpoints.experiment_id", "checkpoints.checkpoint_id"],
            name="fk_checkpoints_parent_checkpoints",
        ),
        ForeignKeyConstraint(
            ["experiment_id", "event_seq"],
            ["events.experiment_id", "events.seq"],
            name="fk_checkpoints_event_seq_events",
        ),
    )

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.experiment_id"), primary_key=True
    )
    checkpoint_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    event_seq: Mapped[int] = mapped_column(Integer)  # the dump event
    manifest_hash: Mapped[str] = mapped_column(ForeignKey("blobs.hash"))
    model_age: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Snapshot(Base):
    """A Parquet snapshot of a table's rows for one experiment, stored as a blob."""

    __tablename__ = "snapshots"

    snapshot_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.experiment_id"))
    table_name: Mapped[str] = mapped_column(String(40))
    event_seq: Mapped[int] = mapped_column(Integer)
    blob_hash: Mapped[str] = mapped_column(ForeignKey("blobs.hash"))
    rows: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Request(Base):
    """An edit asked of an experiment from outside its process (the CLI, the UI), applied by the process
    that holds the experiment at its next safe point (revision 0005).

    ``status`` moves pending → applying → applied (``applied_seq`` names the event it became) or refused
    (``error`` says why); a pending request may be cancelled instead. ``applying`` lasts while the
    process that claimed it applies it; the event and ``applied`` are written in one transaction.
    """

    __tablename__ = "requests"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'applying', 'applied', 'refused', 'cancelled')",
                        name="status_known"),
        # What a safe point reads: an experiment's pending requests, oldest first (one index probe).
        Index("ix_requests_queue", "experiment_id", "status", "request_id"),
    )

    request_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.experiment_id"))
    kind: Mapped[str] = mapped_column(String(40))  # the event kind it asks for (prune, deny, dump, ...)
    payload: Mapped[dict] = mapped_column(JsonPayload)  # its checked arguments (events/requests.py)
    requested_by: Mapped[str] = mapped_column(String(200))  # user@host, or ui:… for the web UI
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    applied_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
