"""The deployment's ACLs, derived from the topic layout: who may write and read what."""

from __future__ import annotations

from services.core import topics
from services.core.saga import OWNER, SUBMITTER
from services.operator import access


def writes(principal: str) -> set[str]:
    return {g.name for g in access.grants() if g.principal == principal and g.operation == "WRITE"}


def test_each_service_writes_its_own_topics_the_completions_and_the_dead_letters_only() -> None:
    shared = {topics.COMPLETIONS.name, topics.DEAD_LETTERS.name}
    for service in topics.SERVICES:
        own = {t.name for t in topics.ALL_TOPICS if t.name.startswith(f"{topics.PREFIX}.{service}.")}
        assert writes(service) == own | shared
        owned = {topics.topic_for(e, service).name for e, o in OWNER.items() if o == service}
        assert owned <= own  # every event it owns goes to a topic it may write


def test_the_client_writes_submissions_only_and_reads_no_dead_letters() -> None:
    assert writes(SUBMITTER) == {topics.SUBMISSIONS.name}
    reads = {g.name for g in access.grants() if g.principal == SUBMITTER and g.resource == "TOPIC"}
    assert topics.DEAD_LETTERS.name not in reads and topics.COMPLETIONS.name in reads
    groups = [g for g in access.grants() if g.principal == SUBMITTER and g.resource == "GROUP"]
    assert [(g.name, g.prefixed) for g in groups] == [(f"{topics.PREFIX}-client-", True)]


def test_no_grant_is_prefixed_wider_than_the_deployment() -> None:
    for g in access.grants("t-42", topics.build_topics("t-42")):
        assert g.name.startswith(("t-42.", "t-42-")), g
        assert g.operation in ("READ", "WRITE") and g.principal in access.PRINCIPALS
    groups = {g.name for g in access.grants() if g.resource == "GROUP" and g.principal in topics.SERVICES}
    # a service joins its own group only, and the vector service its workers' group too
    assert groups == {f"{topics.PREFIX}-{s}" for s in topics.SERVICES} | {topics.work_group("vector")}
    assert topics.WORK_TOPICS[0].name not in {g.name for g in access.grants() if g.principal == SUBMITTER}
