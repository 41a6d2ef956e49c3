"""The console's pure parts: a saga's timeline from its history."""

from __future__ import annotations

from services.console.app import steps_of
from services.operator.state import fold


def message(event_type: str, second: float, producer: str = "x", **payload: object) -> dict[str, object]:
    return {"event_type": event_type, "event_id": f"{event_type}-{second}", "causation_id": None,
            "occurred_at": f"2026-12-06T10:00:{second:06.3f}+00:00", "producer": producer, "saga_id": "s",
            "payload": payload}


def test_each_step_spans_from_its_trigger_to_its_outcome_and_its_undo() -> None:
    history = [message("DocumentSubmitted", 0), message("UploadCompleted", 2), message("IntegrityVerified", 3),
               message("SecurityRecorded", 3.5), message("VectorsFailed", 9, reason="corrupt PDF"),
               message("SecurityCompensated", 9.5), message("IntegrityCompensated", 9.75)]
    steps = {s["name"]: s for s in steps_of(fold("d", history))}
    assert (steps["Upload"]["start"], steps["Upload"]["end"]) == (0, 2)  # DocumentSubmitted -> UploadCompleted
    assert (steps["Vectors"]["start"], steps["Vectors"]["end"], steps["Vectors"]["status"]) == (3.5, 9, "failed")
    assert steps["Security"]["compensated"] == 9.5 and steps["Graph"]["start"] is None
