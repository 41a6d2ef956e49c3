"""Who may publish and read what on Kafka: the deployment's principals and their ACLs.

Every process authenticates with its own SCRAM principal (`Settings.kafka`): each service
with its name, submitters as `client`, operators and provisioning as `admin` (the broker's
super user). The KRaft authorizer denies whatever no ACL allows, and the ACLs follow the
topic layout (`topics.py`, one topic per producer):

- a service writes only its own topics (its events, its progress, its work items), plus the
  completions and dead-letter topics; it reads every topic of its deployment; it joins only
  its group (and its workers' group, `<prefix>-<service>-work`);
- the client writes only submissions; it reads the saga's events, progress and completions
  (not the dead letters), and joins only groups named `<prefix>-client-*`.

So a `VectorsIndexed` from any principal but `vector` is refused by the broker, and an event
of the wrong type on a topic its principal owns is dead-lettered by every consumer
(`runtime.Runtime.consume`). docs/security.md has the threat model.

aiokafka has no admin API for SCRAM credentials or ACLs; confluent-kafka's AdminClient does.

    python -m services.operator.provision   # also principals, topics and ACLs of UDS3_TOPIC_PREFIX
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from services.core import topics
from services.core.config import Settings
from services.core.saga import SUBMITTER

PRINCIPALS: tuple[str, ...] = (*topics.SERVICES, SUBMITTER)


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW ACL: `principal` may do `operation` on a topic or group (a literal name or,
    with `prefixed`, every name that starts with it)."""

    principal: str
    operation: str  # READ or WRITE
    resource: str  # TOPIC or GROUP
    name: str
    prefixed: bool = False


def grants(prefix: str = topics.PREFIX, layout: tuple[topics.Topic, ...] = topics.ALL_TOPICS) -> list[Grant]:
    """Every ACL of one deployment (pure: derived from the topic layout)."""
    out = [Grant(writer, "WRITE", "TOPIC", t.name) for t in layout for writer in t.writers]
    for service in topics.SERVICES:
        out += [Grant(service, "READ", "TOPIC", f"{prefix}.", prefixed=True),
                Grant(service, "READ", "GROUP", f"{prefix}-{service}")]
    out += [Grant(t.writers[0], "READ", "GROUP", topics.work_group(t.writers[0], prefix))
            for t in layout if t.name.endswith(".work")]
    readable = [t for t in layout if not t.name.endswith((".saga.dlq", ".work"))]
    out += [Grant(SUBMITTER, "READ", "TOPIC", t.name) for t in readable]
    out.append(Grant(SUBMITTER, "READ", "GROUP", topics.client_group_prefix(prefix), prefixed=True))
    return sorted(out)


def _binding(g: Grant) -> AclBinding:
    return AclBinding(
        ResourceType[g.resource], g.name,
        ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL,
        f"User:{g.principal}", "*", AclOperation[g.operation], AclPermissionType.ALLOW,
    )


def admin_client(settings: Settings) -> AdminClient:
    o = settings.kafka("admin")
    return AdminClient({
        "bootstrap.servers": o["bootstrap_servers"], "security.protocol": o["security_protocol"],
        "sasl.mechanism": o["sasl_mechanism"], "sasl.username": o["sasl_plain_username"],
        "sasl.password": o["sasl_plain_password"],
    })


def _provision_principals_and_acls(settings: Settings, prefix: str, layout: tuple[topics.Topic, ...]) -> None:
    admin = admin_client(settings)
    # Upserts: the same password again changes nothing; a new one in the environment rotates it.
    scram = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(p, scram, settings.kafka(p)["sasl_plain_password"].encode()) for p in PRINCIPALS
    ]
    for future in admin.alter_user_scram_credentials(upserts, request_timeout=30).values():
        future.result()
    for future in admin.create_acls([_binding(g) for g in grants(prefix, layout)], request_timeout=30).values():
        future.result()  # creating an ACL that exists is a no-op


async def provision_kafka(
    settings: Settings, prefix: str = topics.PREFIX, layout: tuple[topics.Topic, ...] | None = None
) -> list[str]:
    """The deployment's principals, topics and ACLs (idempotent, as admin). Returns the
    topics it created."""
    if layout is None:
        same = prefix == topics.PREFIX
        layout = topics.ALL_TOPICS if same else topics.build_topics(prefix, topics.REPLICATION_FACTOR)
    await asyncio.to_thread(_provision_principals_and_acls, settings, prefix, layout)
    return await topics.ensure_topics(settings, layout)
