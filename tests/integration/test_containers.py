"""The deployment's real components in containers: Apache-Kafka-compatible broker (Confluent
Platform, KRaft) and a ClickHouse *server* reached over HTTP, instead of the local stack (Tansu +
chDB).

The same produce -> ledger sink -> ClickHouse check as tests/integration/test_ledger_sink.py, with
settings built only from environment variables (CXLEDGER_KAFKA_BOOTSTRAP,
CXLEDGER_CLICKHOUSE_DSN=http://...), as compose.yaml and the k8s manifests set them.

Needs a Docker engine (testcontainers). Without one every test here is skipped with the reason
("no Docker engine reachable: ..."), as on the project's build machines. It does not use the
``clickhouse`` fixture (that is the process's one chDB store): it opens its own HTTP client with
sinks.clickhouse.connect(), and any number of those can coexist with chDB in one process.
"""

from __future__ import annotations

import uuid

import pytest

from cxledger.config import Settings, Topics, load_settings
from producers.sdk import LedgerProducer
from sinks.ledger_sink import ledger_sink

from tests.integration.ledger_helpers import assert_ledger_holds_exactly, drain, make_events

pytestmark = [pytest.mark.docker, pytest.mark.integration]

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:25.8"  # the image deploy/compose.yaml runs
CLICKHOUSE_USER, CLICKHOUSE_PASSWORD, CLICKHOUSE_DB = "cxledger", "test-password", "cx"


@pytest.fixture(scope="module")
def docker_engine():
    """Skip the module's tests cleanly when no Docker engine answers."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no SDK, no socket, daemon not running, permission denied ...
        pytest.skip(f"no Docker engine reachable: {type(exc).__name__}: {exc}")
    client.close()


@pytest.fixture(scope="module")
def kafka_bootstrap(docker_engine):
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.14
        from testcontainers.kafka import KafkaContainer

    with KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka:
        yield kafka.get_bootstrap_server()


@pytest.fixture(scope="module")
def clickhouse_server_dsn(docker_engine):
    try:
        from testcontainers.community.clickhouse import ClickHouseContainer
    except ImportError:  # testcontainers < 4.14
        from testcontainers.clickhouse import ClickHouseContainer

    container = ClickHouseContainer(CLICKHOUSE_IMAGE, username=CLICKHOUSE_USER,
                                    password=CLICKHOUSE_PASSWORD, dbname=CLICKHOUSE_DB)
    container.with_exposed_ports(8123)  # the HTTP interface clickhouse-connect speaks
    with container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(8123)
        yield f"http://{CLICKHOUSE_USER}:{CLICKHOUSE_PASSWORD}@{host}:{port}/{CLICKHOUSE_DB}"


@pytest.fixture(scope="module")
def server(clickhouse_server_dsn):
    """An HTTP client of the ClickHouse server, with the schema created the way `cxledger sink`
    creates it at start (twice: create_tables is idempotent)."""
    from sinks.clickhouse import connect, create_tables

    client = connect(clickhouse_server_dsn)
    create_tables(client)
    create_tables(client)
    yield client
    client.close()


@pytest.fixture
def env_settings(kafka_bootstrap, clickhouse_server_dsn) -> Settings:
    """Settings from the environment only, plus topics of this test's own."""
    settings = load_settings(environ={"CXLEDGER_KAFKA_BOOTSTRAP": kafka_bootstrap,
                                      "CXLEDGER_CLICKHOUSE_DSN": clickhouse_server_dsn,
                                      "CXLEDGER_LEDGER_PARTITIONS": "3"})
    assert settings.dsn == clickhouse_server_dsn and not settings.embedded_store
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(ledger=f"t{suffix}.ledger", deadletter=f"t{suffix}.deadletter",
                    partitions=settings.topics.partitions,
                    derived={k: f"t{suffix}.{k}" for k in settings.topics.derived})
    settings = settings.with_(topics=topics, sink_batch_seconds=0.3)
    from cxledger.topics import create_topics

    create_topics(settings)
    return settings




def test_published_events_arrive_in_the_clickhouse_server_exactly(env_settings, server):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    events = make_events(prefix, 2_000)
    with LedgerProducer(env_settings) as producer:
        assert producer.publish_many(events) == []
    sink = ledger_sink(env_settings, server, batch_rows=700)
    try:
        drain(sink, producer.positions, timeout=120)
    finally:
        sink.close()
    assert_ledger_holds_exactly(server, events, prefix, env_settings.topics.partitions)


class CrashBeforeCommit(Exception):
    pass


def test_a_redelivered_batch_does_not_duplicate_rows_on_the_server(env_settings, server):
    prefix = f"c{uuid.uuid4().hex[:6]}"
    with LedgerProducer(env_settings) as producer:
        producer.publish_many(make_events(prefix, 600))
    published = producer.positions

    crashing = ledger_sink(env_settings, server, batch_rows=10_000, batch_seconds=3.0)

    def crash(offsets):
        raise CrashBeforeCommit()

    crashing._commit = crash  # the process dies after ClickHouse accepted the batch
    with pytest.raises(CrashBeforeCommit):
        drain(crashing, published, timeout=120)
    crashing.consumer.close()
    count = "SELECT count() FROM {t:Identifier} WHERE customer_id LIKE {p:String}"
    params = {"p": f"{prefix}-%"}
    assert server.query(count, parameters={**params, "t": "ledger"}).result_rows[0][0] == 600

    restarted = ledger_sink(env_settings, server, batch_rows=250)
    try:
        drain(restarted, published, timeout=120)
    finally:
        restarted.close()
    assert restarted.stats.consumed == 600
    assert server.query(count, parameters={**params, "t": "ledger"}).result_rows[0][0] == 600
    server.command("OPTIMIZE TABLE ledger_events FINAL")
    assert server.query(count, parameters={**params, "t": "ledger_events"}).result_rows[0][0] == 600
