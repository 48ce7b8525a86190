"""The ``cxledger`` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import structlog

from cxledger.config import ConfigError, Settings, load_settings, redact_dsn
from cxledger.logs import configure_logging

log = structlog.get_logger("cxledger")

NO_KAFKA = ("no Kafka configured and no stack running on {store}: start one with `cxledger up` "
            "(in this directory, or pass --store), or set CXLEDGER_KAFKA_BOOTSTRAP (or [kafka] "
            "bootstrap in the config file)")


def _need_kafka(settings: Settings) -> None:
    if not settings.kafka_bootstrap:
        raise SystemExit("cxledger: " + NO_KAFKA.format(store=settings.store.resolve()))


def _on_store(args, settings: Settings) -> Settings:
    """The settings with ``--store`` applied."""
    if getattr(args, "store", None):
        return settings.with_(store=Path(args.store))
    return settings


def _attached(args, settings: Settings) -> Settings:
    """The settings of the stack running on the store, if one runs there (cxledger.stack)."""
    from cxledger.stack import attach, find_stack

    settings = _on_store(args, settings)
    record = find_stack(settings.store)
    return attach(settings, record) if record else settings


def _store_client(args, settings: Settings):
    """A ClickHouse client for reading: ``--dsn``, else the running stack's query endpoint,
    else the embedded store (when nothing runs on it) or the configured server."""
    from cxledger.stack import find_stack
    from sinks.clickhouse import StoreError, connect

    settings = _on_store(args, settings)
    record = None if getattr(args, "dsn", None) else find_stack(settings.store)
    if getattr(args, "dsn", None):
        dsn = args.dsn
    elif record and record.query:
        dsn = record.dsn
    elif getattr(args, "store", None):
        dsn = f"chdb://{settings.store.resolve()}"
    else:
        dsn = settings.dsn
    if dsn.startswith("chdb://") and not Path(dsn.removeprefix("chdb://")).exists():
        raise SystemExit(f"cxledger: no store at {dsn.removeprefix('chdb://')}; run `cxledger "
                         "up` or `cxledger demo` first, or pass --store/--dsn")
    try:
        return connect(dsn), record
    except StoreError as exc:
        raise SystemExit(f"cxledger: {exc}")


def cmd_demo(args, settings: Settings) -> int:
    from cxledger.demo import run_demo
    from cxledger.stack import find_stack, running_message

    settings = _on_store(args, settings)
    if settings.embedded_store and find_stack(settings.store):
        raise SystemExit(f"cxledger: {running_message(settings.store)}; the demo needs a store "
                         "of its own: pass --store")
    return run_demo(settings, events=args.events, input_file=Path(args.input) if args.input else None,
                    seed=args.seed, keep=args.keep, workers=args.workers)


def cmd_publish(args, settings: Settings) -> int:
    from producers.ingest import IngestError, publish_file
    from producers.sdk import LedgerProducer

    settings = _attached(args, settings)
    _need_kafka(settings)
    status = 0
    with LedgerProducer(settings) as producer:
        for name in args.files:
            try:
                summary = publish_file(Path(name), producer, event_type=args.event_type,
                                       rejects_path=Path(args.rejects) if args.rejects else None,
                                       show_progress=not args.no_progress,
                                       on_reject=lambda r: print(r, file=sys.stderr))
            except IngestError as exc:
                print(f"cxledger: {exc}", file=sys.stderr)
                return 2
            print(f"{name}: {summary.published} published, {len(summary.rejected)} rejected"
                  + (f" (written to {summary.rejects_file})" if summary.rejected else ""))
            status = status or (1 if summary.rejected else 0)
    if settings.acks_wait_for_store:
        print("every published event is in the store")
    return status


def cmd_simulate(args, settings: Settings) -> int:
    from tqdm import tqdm

    from producers.simulator import simulate, simulate_live

    live = args.rate is not None
    if live and not args.duration:
        raise SystemExit("cxledger: --rate needs --duration SECONDS")
    events = (simulate_live(args.rate, args.duration, seed=args.seed) if live
              else simulate(args.events, seed=args.seed))
    total = int(args.rate * args.duration) if live else args.events
    bar = tqdm(total=total, unit="ev", desc="simulating", leave=False)
    started = time.monotonic()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            for n, event in enumerate(events, 1):
                fh.write(json.dumps(event, ensure_ascii=False) + "\n")
                bar.update()
        bar.close()
        print(f"{bar.n} events written to {args.out}")
        return 0
    from producers.sdk import LedgerProducer

    settings = _attached(args, settings)
    _need_kafka(settings)
    with LedgerProducer(settings) as producer:
        for n, event in enumerate(events, 1):
            producer.publish(event)
            bar.update()
            if live:  # pace to the requested rate
                ahead = n / args.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    bar.close()
    print(f"{bar.n} events published to {settings.topics.ledger}")
    return 0


def cmd_topics(args, settings: Settings) -> int:
    from cxledger.topics import create_topics

    _need_kafka(settings)
    for topic, state in create_topics(settings).items():
        print(f"{topic}: {state}")
    return 0


def cmd_schemas(args, settings: Settings) -> int:
    from schemas.catalogue import load_catalogue
    from schemas.compatibility import check_backward_transitive

    catalogue = load_catalogue()
    if args.action == "check":
        problems = check_backward_transitive(catalogue)
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{len(catalogue.event_types)} event types, "
              f"{sum(len(v) for v in catalogue.versions.values())} versions, "
              f"{len(problems)} incompatibilities")
        return 1 if problems else 0
    if not settings.schema_registry_url:
        raise SystemExit("cxledger: set CXLEDGER_SCHEMA_REGISTRY_URL to the registry to register "
                         "with (without one, ids come from schemas/ids.json and need no "
                         "registration)")
    from schemas.registry import register_all, registry_client

    client = registry_client(settings.schema_registry_url, settings.schema_registry_auth)
    for subject, ids in register_all(client, catalogue).items():
        print(f"{subject}: ids {ids}")
    return 0


def cmd_sql(args, settings: Settings) -> int:
    from cxledger.stack import QueryFailed, find_stack, http_query
    from sinks.clickhouse import StoreError

    fmt = {"table": "PrettyCompactMonoBlock", "csv": "CSVWithNames", "json": "JSONEachRow"}[args.format]
    options = {"output_format_pretty_row_numbers": "0"}
    record = None if args.dsn else find_stack(_on_store(args, settings).store)
    try:
        if record and record.query:  # through the running stack's query endpoint
            out = http_query(record, args.query, fmt, options)
        else:
            client, _ = _store_client(args, settings)
            out = client.raw_query(args.query, fmt=fmt, settings=options)
    except (StoreError, QueryFailed) as exc:
        raise SystemExit(f"cxledger: {str(exc).strip()}")
    except Exception as exc:
        raise SystemExit(f"cxledger: query failed: {str(exc).strip()}")
    sys.stdout.write(out.decode())
    return 0


def _metrics_flags(args, settings: Settings) -> Settings:
    """The settings with ``--metrics-host``/``--metrics-port`` applied (process, sink)."""
    if getattr(args, "metrics_host", None):
        settings = settings.with_(metrics_host=args.metrics_host)
    if getattr(args, "metrics_port", None) is not None:
        settings = settings.with_(metrics_port=args.metrics_port)
    return settings


def cmd_sink(args, settings: Settings) -> int:
    from cxledger.health import MetricsPortError, serve_health
    from cxledger.pipeline import Pipeline
    from cxledger.schema_ids import SchemaIdError

    _need_kafka(settings)
    settings = _metrics_flags(args, settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Pipeline(settings) as pipe:
        try:  # /healthz, /readyz, /metrics first: a probe sees the sinks starting
            server = serve_health(pipe.sink_health(), settings)
        except MetricsPortError as exc:
            raise SystemExit(f"cxledger: {exc}")
        try:
            pipe.start_sinks()
        except SchemaIdError as exc:
            server.stop()
            raise SystemExit(f"cxledger: {exc}")
        log.info("sinks running; Ctrl-C to stop", store=redact_dsn(settings.dsn),
                 health=server.url)
        try:
            while not stop.is_set():
                stop.wait(1)
                dead = pipe.dead_sinks()
                if dead:  # never left dead and silent: end, so a supervisor restarts us
                    print(f"cxledger: the sink {dead[0]} failed; see the log above",
                          file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return 0


def cmd_replay(args, settings: Settings) -> int:
    import tempfile

    from processors.rules import load_rules
    from sinks.clickhouse import connect
    from sinks.replay import REPLAY_DB, replay

    client, record = _store_client(args, settings)
    rules = load_rules(settings.rules_path)
    partitions = settings.topics.partitions  # as the live processors count them
    if record is not None:  # a running stack: read through it, replay into a scratch engine
        with tempfile.TemporaryDirectory(prefix="cxledger-replay-") as scratch_dir:
            report = replay(client, rules, scratch=connect(f"chdb://{scratch_dir}"),
                            ledger_partitions=partitions)
        where = "a scratch store (the stack's is read-only from here)"
    else:
        report = replay(client, rules, ledger_partitions=partitions)
        where = f"database {REPLAY_DB}"
    print(f"replayed {report.events} ledger events into {report.derived} derived events in "
          f"{report.seconds:.1f}s ({report.events / max(report.seconds, 1e-9):,.0f} events/s)")
    for t in report.tables:
        verdict = "equal" if t.equal else f"DIFFERENT: {t.only_live} rows only live, " \
                                          f"{t.only_replay} only in replay"
        print(f"  {t.table:<30} live {t.live_rows:>8}  replay {t.replay_rows:>8}  {verdict}")
    print(("replay equals live" if report.equal else
           f"replay differs from live: compare the tables in {where}"))
    return 0 if report.equal else 1


def cmd_customer(args, settings: Settings) -> int:
    from cxledger.customer import CustomerNotFound, customer_report, parse_as_of, render_table
    from processors.rules import load_rules

    try:
        as_of = parse_as_of(args.as_of) if args.as_of else None
    except ValueError as exc:
        raise SystemExit(f"cxledger: --as-of: {exc}")
    client, _ = _store_client(args, settings)
    try:
        report = customer_report(client, load_rules(settings.rules_path), args.customer_id,
                                 as_of=as_of)
    except CustomerNotFound as exc:
        print(f"cxledger: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(render_table(report))
    return 0


def cmd_up(args, settings: Settings) -> int:
    from cxledger.up import run_detached, run_up

    settings = _on_store(args, settings)
    for flag in ("query_host", "query_port", "gateway_host", "gateway_port", "broker_port"):
        if getattr(args, flag) is not None:
            settings = settings.with_(**{flag: getattr(args, flag)})
    if args.workers < 1:
        raise SystemExit("cxledger: --workers must be at least 1")
    if args.detach:
        return run_detached(args.argv, settings)
    return run_up(settings, workers=args.workers, log_level=args.log_level or settings.log_level)


def cmd_status(args, settings: Settings) -> int:
    from cxledger.up import show_status

    return show_status(_on_store(args, settings), args.format)


def cmd_down(args, settings: Settings) -> int:
    from cxledger.up import stop_stack

    return stop_stack(_on_store(args, settings))


def cmd_process(args, settings: Settings) -> int:
    from cxledger.health import MetricsPortError
    from cxledger.schema_ids import SchemaIdError
    from processors.app import run_worker

    _need_kafka(settings)
    try:
        run_worker(_metrics_flags(args, settings), loglevel=args.faust_log_level)
    except (MetricsPortError, SchemaIdError) as exc:
        raise SystemExit(f"cxledger: {exc}")
    return 0


def cmd_gateway(args, settings: Settings) -> int:
    if args.gateway_command == "key":
        return _gateway_key(args)
    from producers.gateway import Gateway

    settings = _attached(args, settings)
    _need_kafka(settings)
    host = args.host or settings.gateway_host
    try:
        gateway = Gateway(settings, host=host,
                          port=args.port if args.port is not None else settings.gateway_port)
    except ValueError as exc:  # a key whose scope names nothing of the contract
        raise SystemExit(f"cxledger: {exc}")
    except OSError as exc:
        raise SystemExit(f"cxledger: cannot listen on {host}:{args.port or settings.gateway_port}"
                         f" ({exc.strerror}); stop what holds it or pass --port")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    gateway.start()
    print(f"gateway on {gateway.url}/v1/events (API at {gateway.url}/openapi.json)",
          file=sys.stderr)
    try:
        while not stop.wait(0.5):
            if not gateway.running:
                log.error("the gateway's server stopped by itself")
                gateway.stop()
                return 1
    finally:
        if stop.is_set():
            gateway.stop()
    return 0


def _gateway_key(args) -> int:
    """``cxledger gateway key``: a new API key and the settings entry that admits it."""
    from producers.api_keys import KeyRing, new_api_key

    def names(text: str) -> list[str]:
        return [n.strip() for n in text.split(",") if n.strip()]

    try:
        key, entry = new_api_key(args.name, names(args.channels), names(args.event_types),
                                 rate=args.rate, burst=args.burst)
        KeyRing(load_settings(environ={}).with_(gateway_keys=(entry,)))  # names the contract's?
    except (ConfigError, ValueError) as exc:
        raise SystemExit(f"cxledger: {exc}")
    if args.format == "json":
        print(json.dumps({"name": entry.name, "key": key, "entry": entry.as_json()}))
        return 0
    print(f"# API key {entry.name!r}: give it to the channel; it is shown only this once\n"
          f"{key}\n"
          f"# its settings entry: add it to the config file, or to the TOML file named by "
          f"CXLEDGER_GATEWAY_KEYS_FILE\n{entry.toml()}", end="")
    return 0


def cmd_broker(args, settings: Settings) -> int:
    from cxledger.localstack import LocalBroker

    broker = LocalBroker(host=settings.broker_host, port=args.port or settings.broker_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with broker as bootstrap:
        from cxledger.topics import create_topics

        create_topics(settings.with_(kafka_bootstrap=bootstrap))
        print(f"export CXLEDGER_KAFKA_BOOTSTRAP={bootstrap}", flush=True)
        try:
            while not stop.is_set():
                stop.wait(1)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_db(args, settings: Settings) -> int:
    """``cxledger db ddl | migrate | status``: the versioned ClickHouse schema (sinks.migrations)."""
    import re

    from processors.rules import load_rules
    from sinks.clickhouse import StoreError, connect, view_params
    from sinks.migrations import (MigrationError, Target, applied_migrations, ddl_script,
                                  latest_version, migrate)

    params = view_params(load_rules(settings.rules_path))
    if args.db_command == "ddl":
        if args.database is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.database):
            raise SystemExit(f"cxledger: --database {args.database!r}: a plain identifier, please")
        sys.stdout.write(ddl_script(Target(args.database, args.cluster), params))
        return 0
    settings = _on_store(args, settings)
    dsn = args.dsn or (f"chdb://{settings.store.resolve()}" if args.store else settings.dsn)
    try:
        client = connect(dsn)
        if args.db_command == "status":
            applied = applied_migrations(client) or []
            for a in applied:
                print(f"{a.version:>4}  {a.name:<24} {a.how:<8} {a.applied_at}  {a.checksum[:12]}"
                      + (f"  cluster {a.cluster}" if a.cluster else ""))
            current = max((a.version for a in applied), default=0)
            print(f"schema version {current}; this cxledger knows version {latest_version()}"
                  + ("" if applied else " (no migrations recorded)"))
            return 0 if current == latest_version() else 1
        report = migrate(client, cluster=args.cluster, params=params)
    except (MigrationError, StoreError) as exc:
        raise SystemExit(f"cxledger: {exc}")
    where = report.database + (f" on cluster {report.cluster}" if report.cluster else "")
    if report.applied:
        print(f"{where}: schema version {report.before} -> {report.after}"
              + (" (existing tables adopted)" if report.adopted else ""))
    else:
        print(f"{where}: schema version {report.after}, up to date")
    for version in report.checksum_mismatches:
        print(f"warning: migration {version} as applied differs from this build's",
              file=sys.stderr)
    return 0


def cmd_bench(args, settings: Settings) -> int:
    """``cxledger bench``: ``python -m benchmarks`` of the source checkout (it brings its own
    broker and store; see benchmarks/harness.py)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "harness.py").exists():
        raise SystemExit("cxledger: bench needs the source checkout (benchmarks/ beside "
                         "cxledger/), as installed by `make install`")
    sys.path.insert(0, str(root))
    from benchmarks.__main__ import main as bench

    argv = ([f"--events={args.events}"] if args.events else []) + (
        ["--quick"] if args.quick else []) + (["--profile", args.profile] if args.profile else [])
    return bench(argv, prog="cxledger bench")


def _metrics_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, help="port of /healthz, /readyz and /metrics "
                   "(default 9108, CXLEDGER_METRICS_PORT; 0 picks a free one)")
    p.add_argument("--metrics-host", help="their listen address (default 0.0.0.0, "
                   "CXLEDGER_METRICS_HOST)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxledger", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (also CXLEDGER_CONFIG)")
    parser.add_argument("--log-format", choices=["console", "json"])
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole pipeline locally on simulated traffic or a file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--events", type=int, default=50_000, help="simulated events (default 50000)")
    src.add_argument("--input", metavar="FILE", help="publish this .jsonl/.csv file instead")
    p.add_argument("--store", help="embedded store directory (default .cxledger/store)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep", action="store_true", help="add to an existing store instead of "
                   "starting empty")
    p.add_argument("--workers", type=int, default=1, help="stream-processor workers (default 1)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("up", help="run the whole stack as a service until Ctrl-C: broker, "
                       "processors, sinks, the ingest gateway and ClickHouse's HTTP interface on "
                       "the store")
    p.add_argument("--store", help="embedded store directory (default ./.cxledger/store)")
    p.add_argument("--workers", type=int, default=1, help="stream-processor workers (default 1)")
    p.add_argument("--detach", action="store_true", help="run in the background; "
                   "`cxledger status` reports on it, `cxledger down` stops it")
    p.add_argument("--query-host", help="query endpoint listen address (default 127.0.0.1)")
    p.add_argument("--query-port", type=int, help="query endpoint port (default 8123)")
    p.add_argument("--gateway-host", help="gateway listen address (default 127.0.0.1)")
    p.add_argument("--gateway-port", type=int, help="gateway port (default 8080)")
    p.add_argument("--broker-port", type=int, help="local broker port (default: a free one)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("status", help="report on the stack running on a store")
    p.add_argument("--store", help="store directory (default ./.cxledger/store)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("down", help="stop the stack running on a store")
    p.add_argument("--store", help="store directory (default ./.cxledger/store)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("customer", help="a customer's timeline and state, folded from the "
                       "ledger (now, or as it stood at --as-of)")
    p.add_argument("customer_id", metavar="ID")
    p.add_argument("--as-of", metavar="T", help="ISO-8601 time (with offset; UTC if none) or "
                   "epoch milliseconds")
    p.add_argument("--format", choices=["table", "json"], default="table")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store", help="store directory (a running stack on it is used)")
    where.add_argument("--dsn", help="ClickHouse DSN")
    p.set_defaults(func=cmd_customer)

    p = sub.add_parser("publish", help="publish JSON Lines or CSV files to the ledger")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--store", help="find the stack running on this store (default "
                   "./.cxledger/store)")
    p.add_argument("--event-type", help="event type of a CSV without an event_type column")
    p.add_argument("--rejects", help="where to write rejected lines (default FILE.rejects)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("simulate", help="generate realistic traffic (to Kafka or a file)")
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rate", type=float, help="events per second (live mode, with --duration)")
    p.add_argument("--duration", type=float, help="seconds of live traffic")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", help="write JSON Lines here instead of publishing")
    p.add_argument("--store", help="find the stack running on this store (default "
                   "./.cxledger/store)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("topics", help="manage topics")
    p.add_argument("action", choices=["create"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("schemas", help="check schema compatibility or register with a registry")
    p.add_argument("action", choices=["check", "register"])
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("sql", help="query the store (through the stack running on it, if any)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store", help="embedded store directory")
    where.add_argument("--dsn", help="ClickHouse DSN, e.g. http://user:pass@host:8123/cx")
    p.add_argument("query")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("sink", help="run the ClickHouse sinks against the configured Kafka")
    _metrics_arguments(p)
    p.set_defaults(func=cmd_sink)

    p = sub.add_parser("replay", help="recompute the derived tables from the ledger and compare "
                       "them with the live ones")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store", help="embedded store directory")
    where.add_argument("--dsn", help="ClickHouse DSN")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("process", help="run a stream-processor worker (faust); start more "
                       "with the same settings to scale out")
    p.add_argument("--faust-log-level", default="warning",
                   choices=["debug", "info", "warning", "error"])
    _metrics_arguments(p)
    p.set_defaults(func=cmd_process)

    p = sub.add_parser("gateway", help="HTTP ingest gateway for non-Python channels: POST "
                       "/v1/events with an API key; `gateway key` makes a key")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1, "
                   "CXLEDGER_GATEWAY_HOST)")
    p.add_argument("--port", type=int, help="port (default 8080, CXLEDGER_GATEWAY_PORT)")
    p.add_argument("--store", help="find the stack running on this store for its Kafka")
    p.set_defaults(func=cmd_gateway, gateway_command=None)
    gsub = p.add_subparsers(dest="gateway_command")
    k = gsub.add_parser("key", help="make an API key; prints the key once and its settings "
                        "entry (only the key's SHA-256 goes into the settings)")
    k.add_argument("--name", required=True, help="the key's name (letters, digits, _ and -), "
                   "e.g. the channel system that uses it")
    k.add_argument("--channels", default="*", help="channels it may publish for, comma-"
                   "separated; patterns allowed (default *: all)")
    k.add_argument("--event-types", default="*", help="event types it may publish, comma-"
                   "separated; patterns allowed, e.g. 'complaint.*' (default *: all)")
    k.add_argument("--rate", type=float, help="events per second (default: the gateway's rate "
                   "setting)")
    k.add_argument("--burst", type=int, help="events at once (default: the gateway's burst)")
    k.add_argument("--format", choices=["toml", "json"], default="toml")

    p = sub.add_parser("db", help="the ClickHouse schema: render its DDL (one node or a "
                       "cluster), apply the versioned migrations, show the recorded version")
    dsub = p.add_subparsers(dest="db_command", required=True)
    d = dsub.add_parser("ddl", help="print the DDL of the current schema (with its migration "
                        "records) for one node or, with --cluster, replicated and distributed")
    d.add_argument("--cluster", metavar="NAME", help="a cluster of <remote_servers>: Replicated "
                   "tables, Distributed tables over them, ON CLUSTER")
    d.add_argument("--database", metavar="DB", help="qualify every name with this database "
                   "(with --cluster: default cx)")
    for name, text in (("migrate", "apply the pending migrations (idempotent; refuses a schema "
                        "newer than this build)"),
                       ("status", "list the recorded migrations; exit 1 unless current")):
        d = dsub.add_parser(name, help=text)
        where = d.add_mutually_exclusive_group()
        where.add_argument("--dsn", help="ClickHouse DSN (default CXLEDGER_CLICKHOUSE_DSN, else "
                           "the embedded store)")
        where.add_argument("--store", help="embedded store directory")
        if name == "migrate":
            d.add_argument("--cluster", metavar="NAME", help="migrate ON CLUSTER (recorded: "
                           "later runs follow it)")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("bench", help="measure every stage beside its limit in one run and "
                       "print one JSON document (also written to benchmarks/results/)")
    p.add_argument("--events", type=int, help="simulated events (default 1000000)")
    p.add_argument("--quick", action="store_true", help="100000 events, shorter phases")
    p.add_argument("--profile", metavar="DIR", help="py-spy profiles of the sinks and workers")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("broker", help="run the local Tansu broker in the foreground")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_broker)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"cxledger: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_format or settings.log_format, args.log_level or settings.log_level)
    try:
        return args.func(args, settings)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
