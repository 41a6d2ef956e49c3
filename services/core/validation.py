"""What every input must be before it can name a path, a filter or a query: one definition.

Events are this system's API, so every event on a topic and every caller is untrusted. The
client and the CLI refuse a bad submission with the rule it breaks; every consumer checks each
decoded event (`check_event`) before any handler runs, and dead-letters it with the rule.
Ids are canonical UUIDs (lower case, hyphenated: `str(uuid.UUID(x)) == x`), so an id can never
be a relative path, a quote or a filter expression, and one document has one spelling.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
import uuid
from collections.abc import Mapping
from typing import Any

from services.core.events import DOCUMENT_SUBMITTED, Event

# The formats that can be ingested; the uploader decides which one a document is, from its bytes.
PDF = "application/pdf"
TEXT = "text/plain"

SECURITY_LEVELS = ("public", "internal", "confidential", "restricted")
DEFAULT_SECURITY_LEVEL = "internal"
# Bounds of a submission's text fields, in characters. They hold what a records office writes
# in them with room to spare, and keep one event far below Kafka's 1 MB message limit (the
# largest case: 64 metadata entries of 2,000 characters plus 1,000 references is ~180 kB).
TEXT_LIMITS = {"title": 1000, "author": 300, "organisation": 300, "case_number": 100, "submitter": 200,
               "content_type": 100}
SOURCE_URI_MAX = 4096  # PATH_MAX on Linux
METADATA_MAX_ENTRIES = 64
METADATA_KEY_MAX = 100
METADATA_VALUE_MAX = 2000
REFERENCES_MAX = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")


class InvalidInput(ValueError):
    """An input breaks a rule; the message names the field and the rule."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def uuid_id(name: str, value: object) -> str:
    """`value` if it is a canonical UUID, else InvalidInput."""
    canonical = None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            canonical = str(uuid.UUID(value))
    if canonical is None or canonical != value:
        raise InvalidInput(f"{name} must be a canonical UUID (e.g. {uuid.UUID(int=0)}), not {_shown(value)}")
    return canonical


def text(name: str, value: object, limit: int) -> str:
    """A single-line text of at most `limit` characters: no control characters (newlines, NUL,
    escape sequences), which would forge log lines or terminal output."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text, not {_shown(value)}")
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value):,} characters long; at most {limit:,}")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidInput(f"{name} contains control characters: {_shown(value)}")
    return value


def sha256_hex(name: str, value: object) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidInput(f"{name} must be 64 lower-case hex digits (a sha256), not {_shown(value)}")
    return value


def security_level(value: object) -> str:
    if value not in SECURITY_LEVELS:
        raise InvalidInput(f"security level must be one of {', '.join(SECURITY_LEVELS)}, not {_shown(value)}")
    return str(value)


def check_submission(payload: Mapping[str, Any]) -> None:
    """The fields of a DocumentSubmitted (the client's and the CLI's too, before publishing)."""
    text("source", payload.get("source_uri"), SOURCE_URI_MAX)
    for name, limit in TEXT_LIMITS.items():
        if payload.get(name) is not None:
            text(name, payload[name], limit)
    if payload.get("declared_sha256") is not None:
        sha256_hex("declared sha256", payload["declared_sha256"])
    security_level(payload.get("security_level"))
    references = payload.get("references") or []
    if len(references) > REFERENCES_MAX:
        raise InvalidInput(f"{len(references):,} references; at most {REFERENCES_MAX:,}")
    for ref in references:
        uuid_id("reference", ref)
    metadata = payload.get("metadata") or {}
    if len(metadata) > METADATA_MAX_ENTRIES:
        raise InvalidInput(f"{len(metadata)} metadata entries; at most {METADATA_MAX_ENTRIES}")
    for key, value in metadata.items():
        text("metadata key", key, METADATA_KEY_MAX)
        text(f"metadata {key!r}", value, METADATA_VALUE_MAX)


def check_event(event: Event) -> None:
    """Every id of the envelope, and the payload of the events that come from outside."""
    for name in ("event_id", "document_id", "saga_id", "correlation_id"):
        uuid_id(name, getattr(event, name))
    if event.causation_id is not None:
        uuid_id("causation_id", event.causation_id)
    if event.event_type == DOCUMENT_SUBMITTED:
        check_submission(event.payload)
