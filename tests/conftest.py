"""Shared fixtures: one local broker and one embedded store for the whole run."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cxledger.config import Settings, Topics, load_settings
from cxledger.logs import configure_logging

configure_logging("console", os.environ.get("CXLEDGER_TEST_LOG_LEVEL", "warning"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """Bootstrap of a real Tansu broker (child process), or CXLEDGER_KAFKA_BOOTSTRAP if set."""
    if os.environ.get("CXLEDGER_KAFKA_BOOTSTRAP"):
        yield os.environ["CXLEDGER_KAFKA_BOOTSTRAP"]
        return
    from cxledger.localstack import LocalBroker

    with LocalBroker(log_file=tmp_path_factory.mktemp("broker") / "tansu.log") as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store") / "store"


@pytest.fixture(scope="session")
def clickhouse(store_dir):
    """The one ClickHouse client of this test process (chDB: one directory per process)."""
    from sinks.clickhouse import connect, create_tables

    dsn = os.environ.get("CXLEDGER_CLICKHOUSE_DSN") or f"chdb://{store_dir}"
    client = connect(dsn)
    create_tables(client)
    yield client
    client.close()


@pytest.fixture
def settings(broker, store_dir) -> Settings:
    """Settings with topics of their own, so tests sharing the broker do not see each other."""
    suffix = uuid.uuid4().hex[:8]
    base = load_settings(environ={})
    topics = Topics(
        ledger=f"t{suffix}.ledger", deadletter=f"t{suffix}.deadletter", partitions=3,
        processors_app=f"t{suffix}-processors",
        derived={k: f"t{suffix}.{k}" for k in base.topics.derived},
    )
    settings = base.with_(kafka_bootstrap=broker, topics=topics, store=store_dir,
                          sink_batch_seconds=0.3)
    from cxledger.topics import create_topics

    create_topics(settings)
    return settings
