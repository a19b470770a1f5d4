"""Configure logging once per process: readable text or JSON lines, secrets redacted.

Every ``phrasestream`` command calls :func:`configure_logging` before it does anything else.
It installs one handler on the root logger whose formatter is structlog's
``ProcessorFormatter``, so our loggers (``logging.getLogger("phrasestream...")``), structlog
loggers (``structlog.get_logger()``) and third-party loggers (Faust, mode, aiokafka, kafka,
py.warnings) all go through the same chain:

    level, logger name, UTC timestamp, ``extra={...}`` fields
    -> exception as text -> redaction -> text or JSON renderer

``PHRASESTREAM_LOG_FORMAT=json`` writes one JSON object per line with at least
``timestamp``, ``level``, ``logger`` and ``event`` (plus ``exception`` when there is one);
``text`` (the default) writes structlog's console lines without colours, for people and files.

Secrets never reach a log line: values under keys such as ``password``, ``dsn``, ``secret`` or
``token`` are replaced by ``[REDACTED]``, and in every string (the message, the exception text,
other values) the password of a URL (``postgresql://user:pass@host``) and of a
``password=...`` parameter is replaced by ``***``. ``Settings.dsn`` is still never logged on
purpose; this is the net under that rule.

Example::

    from ops.logs import configure_logging
    configure_logging(Settings())
    logging.getLogger("phrasestream.x").info("connecting to %s", "postgresql://u:pw@db/x")
    # -> ... connecting to postgresql://u:***@db/x
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from schemas.settings import Settings

REDACTED = "[REDACTED]"

SECRET_KEY = re.compile(r"pass(word|wd|phrase)?$|secret|token|dsn|api_?key|credential", re.IGNORECASE)
"""Keys whose values are never shown (``password``, ``pg_dsn``, ``api_key``, ...)."""

URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/?#@]*:)[^\s@/]*@", re.IGNORECASE)
"""The password of a URL: ``postgresql://user:pass@host`` -> ``postgresql://user:***@host``."""

PASSWORD_PARAM = re.compile(
    r"""(?P<head>\b\w*pass(?:word|wd)?['"]?\s*[=:]\s*)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&,;'"}\]]+)""",
    re.IGNORECASE,
)
"""A password given as a parameter: ``?password=x``, ``password='x y'`` (libpq), ``PGPASSWORD=x``,
``'password': 'x'``."""


def redact_text(text: str) -> str:
    """Return ``text`` with URL passwords and ``password=...`` values replaced by ``***``.

    >>> redact_text("postgresql://me:s3cret@db:5432/x?password=s3cret")
    'postgresql://me:***@db:5432/x?password=***'
    """
    if "pass" not in text.lower() and "@" not in text:  # the common case: nothing to look for
        return text
    text = URL_PASSWORD.sub(r"\g<head>***@", text)
    return PASSWORD_PARAM.sub(r"\g<head>***", text)


def _redact_value(key: str, value: Any) -> Any:
    if SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value("", v) for v in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: hide secret values (see the module doc); runs after exceptions are text."""
    return {key: (value if key.startswith("_") else _redact_value(key, value)) for key, value in event_dict.items()}


def _renderer(log_format: str) -> Any:
    if log_format == "json":
        return structlog.processors.JSONRenderer()
    # plain_traceback: no colours nor rich frames in log files (and no warning about format_exc_info)
    return structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)


def make_formatter(log_format: str) -> structlog.stdlib.ProcessorFormatter:
    """Return the formatter of :func:`configure_logging` (``text`` or ``json``); tests use it alone."""
    if log_format not in ("text", "json"):
        raise ValueError(f"unknown log format {log_format!r}; use text or json (PHRASESTREAM_LOG_FORMAT)")
    pre_chain: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # the traceback becomes text, so it is redacted too
            redact_secrets,
            _renderer(log_format),
        ],
    )


HANDLER_NAME = "phrasestream"


class _StderrHandler(logging.StreamHandler):
    """Write to whatever ``sys.stderr`` is when a record comes (a test's capture may swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # not StreamHandler's: it would store the stream

    @property
    def stream(self) -> IO[str]:
        return sys.stderr


def configure_logging(settings: Settings, level: str | int | None = None, stream: IO[str] | None = None) -> None:
    """Send every log record of this process through one formatter (``settings.log_format``).

    ``level`` overrides ``settings.log_level`` (``PHRASESTREAM_LOG_LEVEL``); records go to
    ``stream`` (standard error by default). Calling it again replaces the handler it installed,
    and the root logger keeps no other handler, so no line is written twice.
    """
    formatter = make_formatter(settings.log_format)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level or settings.log_level.upper())
    # Python warnings (deprecations from libraries) become log records. Off, then on: a second
    # configuration must install the hook again (captureWarnings(True) does nothing when it was
    # already on, even if something, a `warnings.catch_warnings` block, restored the old hook since)
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def always(logger: logging.Logger, message: str) -> None:
    """Write ``message`` through ``logger``'s handlers whatever the configured level (readiness lines)."""
    logger.handle(logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None))


def progress(logger: logging.Logger, message: str, show: bool, tag: str = "") -> None:
    """Say how a long command is doing: printed to stderr (``[tag] message``) with ``show``; always logged at DEBUG.

    The one progress helper of the long commands (training, the embedder export, the demo heads,
    the benchmark). The line is logged at DEBUG, so a terminal at the CLI's INFO level sees it once
    (printed) or not at all (``--quiet``), and ``PHRASESTREAM_LOG_LEVEL=DEBUG`` shows every line.
    """
    logger.debug(message)
    if show:
        try:
            print(f"[{tag}] {message}" if tag else message, file=sys.stderr, flush=True)
        except OSError:  # a closed terminal or pipe (Ctrl-C through `| tee`) is no error
            pass
