"""Unit tests of ops.logs: one formatter for every logger, JSON or text, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from ops.logs import HANDLER_NAME, always, configure_logging, redact_text
from schemas.settings import Settings

SECRET = "hunter2-s3cret"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Restore the root logger (handlers, level) and structlog's configuration after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield io.StringIO()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def configured(stream: io.StringIO, log_format: str, level: str = "INFO") -> io.StringIO:
    configure_logging(Settings(log_format=log_format, log_level=level), stream=stream)
    return stream


def json_lines(stream: io.StringIO) -> list[dict]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # each line alone is one JSON object


def test_json_mode_writes_one_object_per_line_with_timestamp_level_logger_and_event(captured):
    out = configured(captured, "json")
    logging.getLogger("phrasestream.worker").info("served %d phrases", 3, extra={"batch": 7})
    logging.getLogger("aiokafka.consumer").warning("third-party line\nwith a newline")
    structlog.get_logger("phrasestream.native").info("native", region="global")

    first, second, third = json_lines(out)
    assert first["event"] == "served 3 phrases" and first["batch"] == 7
    assert first["level"] == "info" and first["logger"] == "phrasestream.worker"
    assert first["timestamp"].endswith("Z") and first["timestamp"][:4].isdigit()
    assert (second["logger"], second["level"], second["event"]) == ("aiokafka.consumer", "warning",
                                                                  "third-party line\nwith a newline")
    assert (third["logger"], third["event"], third["region"]) == ("phrasestream.native", "native", "global")


def test_json_mode_keeps_an_exception_inside_its_one_line(captured):
    out = configured(captured, "json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("phrasestream.sink").exception("write failed")
    [record] = json_lines(out)
    assert record["event"] == "write failed" and record["level"] == "error"
    assert "RuntimeError: boom" in record["exception"]


def test_text_mode_is_one_readable_line_with_level_logger_and_message(captured):
    out = configured(captured, "text")
    logging.getLogger("phrasestream.sink").warning("database write failed (%s); retry %d", "timeout", 2)
    line = out.getvalue()
    assert line.count("\n") == 1
    assert "database write failed (timeout); retry 2" in line
    assert "warning" in line and "phrasestream.sink" in line
    assert "\x1b[" not in line  # no colour codes in log files
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_passwords_and_dsns_never_reach_the_output(captured, log_format):
    out = configured(captured, log_format)
    log = logging.getLogger("phrasestream.test")
    log.info("connecting to postgresql://phrasestream:%s@db:5432/x", SECRET)
    log.info("connecting to postgresql://phrasestream@127.0.0.1:15432/phrasestream?password=%s", SECRET)
    log.info("libpq: host=db password='%s x' dbname=y", SECRET)
    log.info("settings", extra={"pg_dsn": f"postgresql://u:{SECRET}@db/x", "password": SECRET})
    structlog.get_logger("phrasestream.native").info("native", dsn=f"postgresql://u:{SECRET}@db/x",
                                                     nested={"password": SECRET})
    try:
        raise ConnectionError(f"could not connect to postgresql://u:{SECRET}@db/x")
    except ConnectionError:
        log.exception("failed")
    text = out.getvalue()
    assert SECRET not in text
    assert "postgresql://phrasestream:***@db:5432/x" in text  # the rest of the line stays readable
    if log_format == "json":
        records = json_lines(out)
        assert records[3]["pg_dsn"] == "[REDACTED]" and records[3]["password"] == "[REDACTED]"


def test_redact_text_leaves_ordinary_text_and_addresses_alone():
    assert redact_text("mail me at a@b.c about passwords") == "mail me at a@b.c about passwords"
    assert redact_text("kafka://127.0.0.1:19092") == "kafka://127.0.0.1:19092"
    assert redact_text("PGPASSWORD=abc psql") == "PGPASSWORD=*** psql"
    assert redact_text("{'password': 'abc', 'x': 1}") == "{'password': ***, 'x': 1}"


def test_every_logger_goes_through_one_handler_even_when_configured_twice(captured):
    out = configured(captured, "json")
    configure_logging(Settings(log_format="json"), stream=out)
    logging.getLogger("faust.worker").info("from faust")
    assert [h.name for h in logging.getLogger().handlers] == [HANDLER_NAME]
    assert [r["event"] for r in json_lines(out)] == ["from faust"]


def test_the_level_setting_filters_and_always_writes_regardless(captured):
    out = configured(captured, "json", level="WARNING")
    log = logging.getLogger("phrasestream.worker")
    log.info("hidden")
    always(log, "phrasestream worker ready")
    assert [r["event"] for r in json_lines(out)] == ["phrasestream worker ready"]


def test_python_warnings_become_log_records(captured):
    out = configured(captured, "json")
    warnings.warn("old api", DeprecationWarning, stacklevel=1)
    [record] = json_lines(out)
    assert record["logger"] == "py.warnings" and "old api" in record["event"]


def test_python_warnings_are_logged_after_a_second_configuration_too(captured):
    before = warnings.showwarning
    configured(io.StringIO(), "json")
    warnings.showwarning = before  # as a `warnings.catch_warnings` block (pytest's, say) does on leaving
    out = configured(captured, "json")
    warnings.warn("older api", DeprecationWarning, stacklevel=1)
    [record] = json_lines(out)
    assert record["logger"] == "py.warnings" and "older api" in record["event"]


def test_an_unknown_log_format_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")
