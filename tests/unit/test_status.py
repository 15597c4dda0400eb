"""Pins the task status set, which statuses are final, and the transition table the store's
guarded UPDATEs implement."""

from __future__ import annotations

import pytest

from iron_defer_trio.domain.status import TRANSITIONS, TaskStatus, can_transition

FINAL = {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}


def test_statuses_are_the_six_lowercase_database_values() -> None:
    """The enum values are exactly the strings stored in the status column."""
    assert {status.value for status in TaskStatus} == {
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
        "suspended",
    }
    assert TaskStatus("running") is TaskStatus.RUNNING
    assert isinstance(TaskStatus.PENDING, str)
    assert str(TaskStatus.PENDING) == "pending"


def test_transition_table_covers_every_status() -> None:
    """Every status has an entry in TRANSITIONS, and every target is a status."""
    assert set(TRANSITIONS) == set(TaskStatus)
    for targets in TRANSITIONS.values():
        assert targets <= set(TaskStatus)


def test_completed_tasks_have_no_outgoing_transitions() -> None:
    """Nothing moves a completed task on, not even a retry."""
    assert TRANSITIONS[TaskStatus.COMPLETED] == frozenset()
    assert not any(can_transition(TaskStatus.COMPLETED, new) for new in TaskStatus)


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_failed_and_cancelled_tasks_only_go_back_to_pending(status: TaskStatus) -> None:
    """An operator's retry is the one way out of failed and cancelled: pending again."""
    assert TRANSITIONS[status] == frozenset({TaskStatus.PENDING})


@pytest.mark.parametrize("status", list(TaskStatus))
def test_is_final_holds_exactly_for_completed_failed_and_cancelled(status: TaskStatus) -> None:
    """is_final is true for the three terminal statuses and false for the others."""
    assert status.is_final is (status in FINAL)


def test_non_final_statuses_can_all_move_somewhere() -> None:
    """Pending, running and suspended tasks always have a way out (no dead ends besides
    final ones)."""
    for status in TaskStatus:
        if not status.is_final:
            assert TRANSITIONS[status], status


def test_engine_transitions_are_exactly_the_documented_ones() -> None:
    """Claim/cancel from pending; complete/retry/fail/suspend/cancel from running; signal,
    cancel and suspend timeout from suspended; an operator's retry from failed and cancelled;
    nothing else."""
    allowed = {(old, new) for old in TaskStatus for new in TaskStatus if can_transition(old, new)}
    assert allowed == {
        (TaskStatus.PENDING, TaskStatus.RUNNING),
        (TaskStatus.PENDING, TaskStatus.CANCELLED),
        (TaskStatus.RUNNING, TaskStatus.COMPLETED),
        (TaskStatus.RUNNING, TaskStatus.PENDING),
        (TaskStatus.RUNNING, TaskStatus.FAILED),
        (TaskStatus.RUNNING, TaskStatus.SUSPENDED),
        (TaskStatus.RUNNING, TaskStatus.CANCELLED),
        (TaskStatus.SUSPENDED, TaskStatus.PENDING),
        (TaskStatus.SUSPENDED, TaskStatus.CANCELLED),
        (TaskStatus.SUSPENDED, TaskStatus.FAILED),
        (TaskStatus.FAILED, TaskStatus.PENDING),
        (TaskStatus.CANCELLED, TaskStatus.PENDING),
    }


def test_pending_task_cannot_complete_or_fail_without_running() -> None:
    """Completion and failure only end an attempt; a finished task never runs again
    directly (a retry makes it pending first)."""
    assert not can_transition(TaskStatus.CANCELLED, TaskStatus.RUNNING)
    assert not can_transition(TaskStatus.FAILED, TaskStatus.RUNNING)
    assert not can_transition(TaskStatus.PENDING, TaskStatus.COMPLETED)
    assert not can_transition(TaskStatus.PENDING, TaskStatus.FAILED)


def test_no_status_transitions_to_itself() -> None:
    """A transition always changes the status."""
    for status in TaskStatus:
        assert not can_transition(status, status)
