from __future__ import annotations

from datetime import UTC, datetime, timedelta

from localcache.api import (
    Condition,
    ConditionStatus,
    ConditionType,
    LocalModelCacheStatus,
    find_condition,
    is_condition_true,
    remove_condition,
    set_condition,
)

T0 = datetime(2026, 11, 28, 0, 0, 0, 123456, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_gets_every_field() -> None:
    conditions, changed = set_condition(
        None,
        ConditionType.READY,
        False,
        reason="Downloading",
        message="0/2 nodes",
        observed_generation=3,
        now=T0,
    )
    assert changed
    (ready,) = conditions
    assert ready.status is ConditionStatus.FALSE
    assert ready.reason == "Downloading" and ready.message == "0/2 nodes"
    assert ready.observed_generation == 3
    assert ready.last_transition_time == T0.replace(microsecond=0)
    assert ready.to_dict() == {
        "type": "Ready",
        "status": "False",
        "reason": "Downloading",
        "message": "0/2 nodes",
        "lastTransitionTime": "2026-11-28T00:00:00Z",
        "observedGeneration": 3,
    }


def test_transition_time_moves_only_when_status_flips() -> None:
    conditions, _ = set_condition(None, "Ready", False, reason="Downloading", message="0/2", now=T0)
    same, changed = set_condition(conditions, "Ready", False, reason="Downloading", message="0/2", now=T1)
    assert not changed
    assert same[0].last_transition_time == T0.replace(microsecond=0)
    progressed, changed = set_condition(same, "Ready", False, reason="Downloading", message="1/2", now=T1)
    assert changed
    assert progressed[0].last_transition_time == T0.replace(microsecond=0)
    assert progressed[0].message == "1/2"
    flipped, changed = set_condition(progressed, "Ready", True, reason="Downloaded", message="2/2", now=T1)
    assert changed
    assert flipped[0].last_transition_time == T1.replace(microsecond=0)
    assert is_condition_true(flipped, "Ready")
    # the input lists were not modified
    assert conditions[0].message == "0/2" and progressed[0].status is ConditionStatus.FALSE


def test_observed_generation_change_is_a_change() -> None:
    conditions, _ = set_condition(None, "Ready", True, reason="R", observed_generation=1, now=T0)
    updated, changed = set_condition(conditions, "Ready", True, reason="R", observed_generation=2, now=T1)
    assert changed and updated[0].observed_generation == 2


def test_other_conditions_are_kept_and_removal_works() -> None:
    foreign = Condition.model_validate({"type": "SomeoneElses", "status": "Unknown", "extra": "kept"})
    conditions, _ = set_condition([foreign], "Degraded", "True", reason="DownloadFailed", now=T0)
    assert [c.type for c in conditions] == ["SomeoneElses", "Degraded"]
    assert conditions[0].to_dict()["extra"] == "kept"
    assert find_condition(conditions, "Missing") is None
    remaining, removed = remove_condition(conditions, "Degraded")
    assert removed and [c.type for c in remaining] == ["SomeoneElses"]
    _, removed = remove_condition(remaining, "Degraded")
    assert not removed


def test_conditions_round_trip_in_status() -> None:
    wire = {
        "nodeStatus": {"n1": "NodeDownloading"},
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Downloading",
                "message": "",
                "lastTransitionTime": "2026-11-28T01:02:03Z",
                "observedGeneration": 7,
            }
        ],
        "nodeStatusDetails": {
            "n1": {"status": "NodeDownloading", "bytes": 1024, "lastTransitionTime": "2026-11-28T01:02:03Z"}
        },
    }
    assert LocalModelCacheStatus.model_validate(wire).to_dict() == wire
