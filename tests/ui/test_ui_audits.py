"""Audits in the background: one at a time per experiment, the latest finished report shown meanwhile."""

from __future__ import annotations

import time
from dataclasses import replace

from cli.store_builder import NAME

from weightslab.history.log import walk
from weightslab.ui.audits import Audits
from weightslab.ui.timeline import timeline


def _wait(audits: Audits, eid: int, head) -> object:
    deadline = time.monotonic() + 60
    while (report := audits.report(eid, NAME, head)) is None or report.head_seq != head[0]:
        assert time.monotonic() < deadline, "the audit did not finish"
        time.sleep(0.05)
    return report


def test_a_report_is_shown_once_done_and_a_moved_head_is_audited_again_once_the_last_audit_ended(built):
    audits = Audits(built.store, min_interval=0.0)
    try:
        head = built.store.head(built.experiment_id)
        assert audits.report(built.experiment_id, NAME, head) is None  # started, not done
        report = _wait(audits, built.experiment_id, head)
        assert report.ok and report.head_seq == 16
        log = walk(built.store, NAME)
        badges = {e.badge for e in timeline(log, [], 1, report).events}
        assert badges == {"verified"}
        moved = (17, "f" * 64)  # as if an event had been appended: the last report stays until the next ends
        assert audits.report(built.experiment_id, NAME, moved) is report
        behind = timeline(log, [], 1, replace(report, head_seq=10))
        assert {e.seq for e in behind.events if e.badge == "auditing"} == set(range(11, 17))
    finally:
        audits.close()


def test_an_experiment_is_not_audited_twice_at_once_nor_again_within_the_interval(built, monkeypatch):
    from weightslab.history.audit import audit_experiment

    started = []

    def slow_audit(store, name):
        started.append(name)
        time.sleep(0.3)
        return audit_experiment(store, name)

    monkeypatch.setattr("weightslab.ui.audits.audit_experiment", slow_audit)
    audits = Audits(built.store, min_interval=3600.0)
    try:
        head = built.store.head(built.experiment_id)
        audits.report(built.experiment_id, NAME, head)
        for seq in range(17, 22):  # the head moves while the audit runs: no second audit
            audits.report(built.experiment_id, NAME, (seq, None))
        report = _wait(audits, built.experiment_id, head)
        assert audits.report(built.experiment_id, NAME, (30, None)) is report  # and none within the interval
        assert started == [NAME] and not audits.running(built.experiment_id)
    finally:
        audits.close()
