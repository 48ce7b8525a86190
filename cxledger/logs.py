"""structlog set-up: readable on a terminal, JSON lines in production."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(fmt: str | None = None, level: str = "info", stream=None) -> None:
    """``fmt`` console | json; None picks console on a terminal, json otherwise.
    ``stream``: where to write (default stderr), e.g. a log file of ``cxledger up``."""
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer(colors=stream.isatty())
                if fmt == "console" else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # faust / aiokafka / mode / uvicorn log through the standard library.
    logging.basicConfig(stream=stream, force=stream is not sys.stderr,
                        level=max(logging.WARNING, logging.getLevelName(level.upper())),
                        format="%(levelname)s %(name)s: %(message)s")
