"""docker-compose.yml's review service runs `phrasestream review` with settings that exist, on the host's loopback only."""

from pathlib import Path

import yaml

from schemas.settings import Settings
from streams.cli import build_parser

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())


def test_the_review_service_runs_the_review_command_with_known_settings_published_on_loopback():
    service = COMPOSE["services"]["review"]
    args = build_parser().parse_args(service["command"][1:])
    assert args.command == "review"
    fields = {f"PHRASESTREAM_{name.upper()}" for name in Settings.model_fields}
    assert set(service["environment"]) <= fields
    assert service["environment"]["PHRASESTREAM_TOPIC_REVIEW"] == Settings(_env_file=None).topic_review
    assert all(str(port).startswith("127.0.0.1:") for port in service["ports"])
