"""The same services on the stack's 3-node Kafka cluster (`UDS3_KAFKA_NODES=3`): topics with
three replicas of which two must hold a write, and brokers killed or restarted mid-run.

The cluster runs beside the single node (ports of its own), started once per run by the
`cluster` fixture; each chaos run has its own topic prefix, database and replicas of every service.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.core import topics
from services.core.config import REPO_ROOT, Settings
from services.operator import access
from tests.e2e.test_chaos import chaos

pytestmark = pytest.mark.stack
CLUSTER = {"UDS3_KAFKA_NODES": "3"}


@pytest.fixture(scope="module")
def cluster(stack: Settings) -> Iterator[Settings]:
    """The three Kafka nodes (started when not running), and settings that reach them."""
    subprocess.run(["bash", "infra/stack.sh", "up"], cwd=REPO_ROOT, check=True, env={**os.environ, **CLUSTER})
    base = int(os.environ.get("UDS3_KAFKA_CLUSTER_PORT", "29092"))
    yield replace(stack, kafka_bootstrap=",".join(f"127.0.0.1:{base + 2 * i}" for i in range(3)))
    # Three idle Kafka nodes take a good part of two cores: the rest of the run goes without them.
    subprocess.run(["bash", "infra/stack.sh", "down-cluster"], cwd=REPO_ROOT, check=True)


def test_topics_have_three_replicas_and_a_write_needs_two(cluster: Settings) -> None:
    prefix = f"{topics.PREFIX}-rf3"
    layout = topics.build_topics(prefix, replication_factor=3)
    asyncio.run(access.provision_kafka(cluster, prefix, layout))
    try:
        admin = access.admin_client(cluster)
        found = admin.list_topics(timeout=10).topics
        events = found[f"{prefix}.graph.events"]
        assert all(len(p.replicas) == 3 and len(p.isrs) == 3 for p in events.partitions.values())
        from confluent_kafka.admin import ConfigResource

        resource = ConfigResource(ConfigResource.Type.TOPIC, f"{prefix}.graph.events")
        configs = admin.describe_configs([resource])[resource].result()
        assert configs["min.insync.replicas"].value == "2"
        assert configs["unclean.leader.election.enable"].value == "false"
    finally:
        asyncio.run(topics.delete_topics(cluster, prefix))


def test_the_busiest_broker_killed_twice_mid_run_loses_nothing(cluster: Settings, tmp_path: Path) -> None:
    """SIGKILL of the node that leads most of the run's partitions, restarted seconds later,
    twice, while two replicas of every service work and services are killed too."""
    result = chaos(tmp_path / "brokers.json", "--sagas", "10", "--kills", "6", "--replicas", "2",
                   "--broker-kills", "2", env=CLUSTER)
    assert result["broker_kills"] == 2, result["stdout"]
    assert result["crashes"] == 0, "a service died instead of waiting for a broker: " + result["stdout"]
    assert result["lost"] == 0 and result["violations"] == 0, result["stdout"]
    assert result["unexpected"] == 0 and result["duplicate_effects"] == 0, result["stdout"]
    assert (result["completed"], result["compensated"]) == (4, 6)


def test_a_rolling_restart_of_every_broker_mid_run_loses_nothing(cluster: Settings, tmp_path: Path) -> None:
    """Each node in turn stopped (SIGTERM) and started, the next only once every partition is
    fully replicated again: what an upgrade of the cluster does."""
    result = chaos(tmp_path / "rolling.json", "--sagas", "10", "--kills", "4", "--replicas", "2",
                   "--rolling-restart", env=CLUSTER)
    assert result["rolling_restarts"] == 3, result["stdout"]
    assert result["crashes"] == 0, "a service died instead of waiting for a broker: " + result["stdout"]
    assert result["lost"] == 0 and result["violations"] == 0, result["stdout"]
    assert result["unexpected"] == 0 and result["duplicate_effects"] == 0, result["stdout"]
    assert (result["completed"], result["compensated"]) == (4, 6)

