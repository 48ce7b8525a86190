"""Logging: one stream, readable on a terminal, one JSON object per line in production.

Everything a cxledger process logs goes through one handler on the root logger and is rendered by
the same structlog renderer:

- structlog's own loggers (``structlog.get_logger("cxledger.…")``) go through the standard
  library (``structlog.stdlib.LoggerFactory``) to that handler;
- the standard library's loggers of the libraries underneath (faust, mode, aiokafka, uvicorn,
  asyncio, httpx, ...) reach the same handler, whose ``structlog.stdlib.ProcessorFormatter`` renders
  their records like structlog's events (``event``, ``level``, ``logger``, ``timestamp`` and, with
  an exception, ``exception``). They log at ``warning`` and above, or at the configured level when
  it is higher: their ``info`` is chatter;
- librdkafka (every Producer, Consumer and AdminClient of ours: ``Settings.kafka_conf`` sets
  ``logger`` to the ``librdkafka`` logger) instead of its ``%3|1700000000.123|FAIL|...`` lines
  on stderr;
- uncaught exceptions, in the main thread (``sys.excepthook``) and in other threads
  (``threading.excepthook``), as one ``error`` event each with the traceback in ``exception``.

``configure_logging`` may be called again (e.g. ``cxledger up`` moves its log to a file): it
replaces the handler it installed before and leaves other handlers (pytest's) alone.
"""

from __future__ import annotations

import logging
import sys
import threading

import structlog

# Loggers of the libraries underneath: their ``info`` is chatter (faust's partition tables,
# aiokafka's group joins, httpx's every request), so they log at warning and above.
_LIBRARY_FLOOR = logging.WARNING

_log = structlog.get_logger("cxledger")


class _CurrentStderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record is emitted (pytest and ``up``
    swap it), not on the one there was at configuration time."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(str(level).upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    return number


def configure_logging(fmt: str | None = None, level: str = "info", stream=None) -> None:
    """``fmt`` console | json; None picks console on a terminal, json otherwise.
    ``stream``: where to write (default: the current stderr), e.g. a log file of ``cxledger up``."""
    shown = stream if stream is not None else sys.stderr
    try:
        tty = shown.isatty()
    except (AttributeError, ValueError):
        tty = False
    if fmt is None:
        fmt = "console" if tty else "json"
    number = _level_number(level)
    renderer = (structlog.dev.ConsoleRenderer(colors=tty) if fmt == "console"
                else structlog.processors.JSONRenderer())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _record_fields],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    )
    handler = _CurrentStderr() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler._cxledger = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_cxledger", False)]:
        root.removeHandler(old)
        if old.stream not in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__):
            old.flush()
    if stream is not None:
        # a log file replaces the terminal: handlers left by basicConfig or a library go
        for old in [h for h in root.handlers if type(h) in (logging.StreamHandler,)]:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(_LIBRARY_FLOOR, number))
    # ours log at the configured level (structlog's filtering logger has checked it already)
    logging.getLogger("cxledger").setLevel(number)
    logging.getLogger("librdkafka").setLevel(max(_LIBRARY_FLOOR, number))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception


def _record_fields(logger, method_name: str, event_dict: dict) -> dict:
    """A standard-library record's extras worth keeping (librdkafka's facility and client name
    are in the message itself)."""
    record = event_dict.get("_record")
    if record is not None and record.name == "py.warnings":
        event_dict["event"] = str(event_dict.get("event", "")).strip()
    return event_dict


def _log_uncaught(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _log.error("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else None
    _log.error("uncaught exception in a thread", thread=name,
               exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
