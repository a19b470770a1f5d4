"""docs/configuration.md's tables name every setting with its default, and nothing else."""

import re
from pathlib import Path

from schemas.settings import Settings

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_configuration_docs_document_every_setting_with_its_default():
    text = CONFIGURATION.read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        default = field.default.get_secret_value() if hasattr(field.default, "get_secret_value") else field.default
        shown = "(empty)" if default in (None, "") else str(default)
        assert f"| `PHRASESTREAM_{name.upper()}` | `{shown}` |" in text, name


def test_the_configuration_docs_document_each_setting_once_and_no_other():
    rows = re.findall(r"^\| `PHRASESTREAM_([A-Z0-9_]+)` \|", CONFIGURATION.read_text(encoding="utf-8"), flags=re.M)
    assert sorted(rows) == sorted(name.upper() for name in Settings.model_fields)


def test_defaults_use_the_local_services():
    settings = Settings(_env_file=None)
    assert settings.local_kafka and settings.bootstrap == f"127.0.0.1:{settings.kafka_port}"
    assert settings.local_pg and settings.dsn.startswith("postgresql://phrasestream@127.0.0.1:")


def test_an_external_dsn_is_a_secret_in_repr():
    settings = Settings(pg_dsn="postgresql://u:hunter2@db:5432/x")
    assert "hunter2" not in repr(settings)
    assert not settings.local_pg
