"""Branches of a log: where they start, what they are called, where each event goes."""

from __future__ import annotations

from weightslab.events.domain import (
    CheckpointDumped,
    CheckpointLoaded,
    Evaluated,
    ExperimentCreated,
    ExperimentResumed,
    NeuronsPruned,
    StepsTrained,
)
from weightslab.history.branches import BranchTracker


def _train(before: int, after: int) -> StepsTrained:
    return StepsTrained(steps=1, age_before=before, age_after=after)


def _fold(events) -> list[str]:
    tracker = BranchTracker()
    return [tracker.advance(e) for e in events]


def test_a_dump_ends_its_branch_and_the_work_after_it_heads_for_the_next_checkpoint():
    assert _fold([ExperimentCreated(name="x", initial="m"), _train(0, 4), CheckpointDumped(checkpoint_id=0, manifest="m"),
                  _train(4, 8), NeuronsPruned(layer_index=0, neuron_indices=(1,)),
                  CheckpointDumped(checkpoint_id=1, parent_id=0, manifest="m"), Evaluated()]) == [
        "c0", "c0", "c0", "c1-from-c0", "c1-from-c0", "c1-from-c0", "c2-from-c1"]


def test_a_load_starts_a_branch_from_the_loaded_checkpoint_and_a_second_one_gets_a_number():
    names = _fold([ExperimentCreated(name="x", initial="m"), CheckpointDumped(checkpoint_id=0, manifest="m"),
                   _train(4, 8), CheckpointDumped(checkpoint_id=1, parent_id=0, manifest="m"),
                   CheckpointLoaded(checkpoint_id=0, manifest="m"), _train(4, 6),
                   CheckpointLoaded(checkpoint_id=0, manifest="m"), _train(4, 5),
                   CheckpointLoaded(checkpoint_id=1, manifest="m"), _train(8, 9)])
    assert names == ["c0", "c0", "c1-from-c0", "c1-from-c0", "c2-from-c0", "c2-from-c0", "c2-from-c0~2",
                     "c2-from-c0~2", "c2-from-c1", "c2-from-c1"]


def test_a_dump_followed_by_a_load_leaves_no_empty_branch_behind():
    assert _fold([ExperimentCreated(name="x", initial="m"), CheckpointDumped(checkpoint_id=0, manifest="m"),
                  CheckpointLoaded(checkpoint_id=0, manifest="m"), _train(0, 4)]) == ["c0", "c0", "c1-from-c0",
                                                                                         "c1-from-c0"]


def test_a_resume_that_restored_everything_continues_the_branch_one_that_lost_events_starts_another():
    start = [ExperimentCreated(name="x", initial="m"), CheckpointDumped(checkpoint_id=0, manifest="m"), _train(0, 4)]
    whole = ExperimentResumed(checkpoint_id=0, manifest="m", replayed=(3,))
    partial = ExperimentResumed(checkpoint_id=0, manifest="m", not_restored=(3,))
    assert _fold([*start, whole, _train(4, 8)])[-2:] == ["c1-from-c0", "c1-from-c0"]
    assert _fold([*start, partial, _train(0, 2)])[-2:] == ["c1-from-c0~2", "c1-from-c0~2"]


def test_the_branch_of_the_next_event_is_named_on_demand():
    tracker = BranchTracker()
    tracker.advance(ExperimentCreated(name="x", initial="m"))
    tracker.advance(CheckpointDumped(checkpoint_id=0, manifest="m"))
    assert tracker.current is None
    assert tracker.branch() == "c1-from-c0" == tracker.advance(_train(0, 4))
