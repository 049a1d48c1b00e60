"""structlog set-up: JSON lines on stderr, one per event, with bound context."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "info", stream: object = None) -> None:
    """JSON Lines to stderr. asyncssh's own chatty logger is kept at WARNING."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format='{"level":"%(levelname)s","logger":"%(name)s","event":"%(message)s"}',
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
