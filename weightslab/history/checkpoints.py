"""The ``checkpoints`` table: which manifest each checkpoint id names, and its place in the tree.

Rows are written in the transaction of their ``dump`` event (``audit`` checks that
the two agree); ``load`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, func, select

from weightslab.history.schema import Checkpoint

__all__ = ["CheckpointRow", "add_checkpoint", "checkpoint_rows", "next_checkpoint_id"]

_CK = Checkpoint.__table__


@dataclass(frozen=True)
class CheckpointRow:
    """One row of ``checkpoints``."""

    checkpoint_id: int
    parent_id: int | None
    event_seq: int
    manifest_hash: str
    model_age: int


def checkpoint_rows(conn: Connection, experiment_id: int) -> list[CheckpointRow]:
    """The experiment's checkpoints, by id."""
    rows = conn.execute(select(_CK.c.checkpoint_id, _CK.c.parent_id, _CK.c.event_seq, _CK.c.manifest_hash,
                               _CK.c.model_age).where(_CK.c.experiment_id == experiment_id)
                        .order_by(_CK.c.checkpoint_id))
    return [CheckpointRow(*r) for r in rows]


def next_checkpoint_id(conn: Connection, experiment_id: int) -> int:
    """0 for the first checkpoint, else one more than the largest id."""
    last = conn.scalar(select(func.max(_CK.c.checkpoint_id)).where(_CK.c.experiment_id == experiment_id))
    return 0 if last is None else int(last) + 1


def add_checkpoint(conn: Connection, experiment_id: int, row: CheckpointRow) -> None:
    """Register a checkpoint (in the transaction of its dump event)."""
    conn.execute(_CK.insert().values(
        experiment_id=experiment_id, checkpoint_id=row.checkpoint_id, parent_id=row.parent_id,
        event_seq=row.event_seq, manifest_hash=row.manifest_hash, model_age=row.model_age,
        created_at=datetime.now(UTC)))
