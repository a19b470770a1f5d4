"""docker-compose.yml runs the same stack as the local scripts, with the same settings.

CI cannot run Docker here, so these checks read the file instead.
"""

import re
import subprocess
from pathlib import Path

import yaml

from schemas.settings import Settings
from streams.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in COMPOSE["services"][service]["environment"].items()}


def test_compose_runs_kafka_postgres_init_worker_and_sink():
    assert {"kafka", "postgres", "init", "worker", "sink"} <= set(COMPOSE["services"])


def test_compose_kafka_image_is_the_release_the_local_broker_uses():
    assert COMPOSE["services"]["kafka"]["image"] == f"apache/kafka:{Settings().kafka_version}"


def test_every_phrasestream_variable_in_compose_is_a_setting():
    fields = {f"PHRASESTREAM_{name.upper()}" for name in Settings.model_fields}
    for service in ("init", "worker", "sink"):
        assert set(_env(service)) <= fields, service


def test_compose_topics_and_app_id_match_the_defaults():
    env, defaults = _env("worker"), Settings(_env_file=None)
    assert env["PHRASESTREAM_TOPIC_IN"] == defaults.topic_in
    assert env["PHRASESTREAM_TOPIC_OUT"] == defaults.topic_out
    assert env["PHRASESTREAM_TOPIC_DLQ"] == defaults.topic_dlq
    assert env["PHRASESTREAM_TOPIC_LABELED"] == defaults.topic_labeled
    assert env["PHRASESTREAM_APP_ID"] == defaults.app_id


def test_compose_commands_are_cli_subcommands():
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    assert COMPOSE["services"]["worker"]["command"] == ["phrasestream", "worker"]
    assert COMPOSE["services"]["sink"]["command"] == ["phrasestream", "sink"]
    assert {"up", "train", "worker", "sink"} <= subcommands


def test_compose_takes_the_database_password_from_env_not_from_the_yaml():
    reference = re.compile(r"^\$\{PG_PASSWORD:\?[^}]*\}$")
    assert reference.match(COMPOSE["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"])
    for service in ("init", "worker", "sink", "drift-watch"):
        dsn = _env(service)["PHRASESTREAM_PG_DSN"]
        password = dsn.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        assert reference.match(password), service


def test_env_example_defines_every_variable_compose_reads_and_env_is_ignored():
    wanted = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_TEXT))
    example = (ROOT / ".env.example").read_text()
    defined = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line and not line.startswith("#")}
    assert wanted and wanted <= defined
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env must be git-ignored"
