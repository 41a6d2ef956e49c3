"""The input rules (services/core/validation.py): what is refused, with which message."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.core.events import DOCUMENT_SUBMITTED, UPLOAD_COMPLETED, Event
from services.core.validation import InvalidInput, check_event, uuid_id

DOC = str(uuid.uuid4())


def submitted(**payload: Any) -> Event:
    base = {"source_uri": "file:///inbox/case.pdf", "size_bytes": 10, "declared_sha256": None,
            "content_type": "application/pdf", "title": "Case 17", "author": None, "organisation": None,
            "case_number": "C-17", "references": [], "metadata": {}, "security_level": "internal",
            "submitter": "clerk"}
    return Event(DOCUMENT_SUBMITTED, DOC, str(uuid.uuid4()), payload={**base, **payload})


HOSTILE_IDS = ["../../etc", "/etc/passwd", "doc-1", "", '" || id != "', DOC.upper(), DOC.replace("-", ""),
               "{" + DOC + "}", DOC + "\n", f"urn:uuid:{DOC}"]


@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_an_id_is_a_canonical_uuid_or_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="document id must be a canonical UUID"):
        uuid_id("document id", value)


@pytest.mark.parametrize("field", ["event_id", "document_id", "saga_id", "correlation_id", "causation_id"])
@pytest.mark.parametrize("value", ["../x", '") or true or ("', "42"])
def test_every_envelope_id_is_checked(field: str, value: str) -> None:
    good = Event(UPLOAD_COMPLETED, DOC, str(uuid.uuid4()), causation_id=str(uuid.uuid4()))
    check_event(good)
    with pytest.raises(InvalidInput, match=field):
        check_event(Event(**{**good.__dict__, field: value}))


REFUSED_SUBMISSIONS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown security level": ({"security_level": "top-secret"}, "security level must be one of"),
    "short sha256": ({"declared_sha256": "abc123"}, "64 lower-case hex digits"),
    "upper-case sha256": ({"declared_sha256": "A" * 64}, "64 lower-case hex digits"),
    "newline in the title": ({"title": "Case\n[stack] ready"}, "title contains control characters"),
    "escape sequence in the author": ({"author": "\x1b[2Jclerk"}, "author contains control characters"),
    "a title too long": ({"title": "x" * 1001}, "title is 1,001 characters long; at most 1,000"),
    "a path as a reference": ({"references": ["../other"]}, "reference must be a canonical UUID"),
    "too many references": ({"references": [str(uuid.uuid4()) for _ in range(1001)]}, "at most 1,000"),
    "too much metadata": ({"metadata": {str(i): "v" for i in range(65)}}, "at most 64"),
    "NUL in metadata": ({"metadata": {"court": "north\x00"}}, "contains control characters"),
}


@pytest.mark.parametrize("case", list(REFUSED_SUBMISSIONS))
def test_a_submission_that_breaks_a_rule_is_refused_naming_it(case: str) -> None:
    change, message = REFUSED_SUBMISSIONS[case]
    check_event(submitted())
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[")):
        check_event(submitted(**change))


def test_unicode_text_within_bounds_is_accepted() -> None:
    check_event(submitted(title="Grundbuch Flurstück 88 – Übertragung", author="Zoë Ørsted",
                          metadata={"Gericht": "Süd"}, references=[str(uuid.uuid4())], declared_sha256="0" * 64,
                          security_level="confidential"))
