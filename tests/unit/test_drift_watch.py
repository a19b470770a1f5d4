"""drift-watch: which flags become alerts, and one head's trouble never stops the others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retrain.drift.watch import alerts_of, check_round
from schemas.observations import DriftAlert

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def summary(region: str, model: str, flags: dict[str, bool], out: Path) -> dict:
    return {
        "region": region, "model": model,
        "window": {"start": "2026-11-27T12:00:00+00:00", "end": "2026-11-28T12:00:00+00:00", "length": "24h"},
        "reference": {"kind": "training", "version": "v7", "rows": 5500},
        "rows": {"current": 1234, "reference": 5500},
        "metrics": {name: {"value": 0.3 if flag else 0.01, "threshold": 0.2, "flag": flag} for name, flag in flags.items()},
        "report": str(out / "report.html"),
    }


def test_each_tripped_flag_is_one_alert_with_its_value_threshold_window_and_report(tmp_path: Path):
    s = summary("global", "intent", {"label_psi": True, "label_js": True, "confidence_wasserstein": False}, tmp_path)
    alerts = alerts_of(s, "round-1", NOW)
    assert [a.metric for a in alerts] == ["label_js", "label_psi"]
    first = alerts[0]
    assert (first.value, first.threshold, first.rows) == (0.3, 0.2, 1234)
    assert (first.region, first.model, first.model_version, first.reference) == ("global", "intent", "v7", "training")
    assert first.window == "24h" and first.window_start == datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert first.report_path.endswith("report.html") and first.key == "global/intent"
    assert DriftAlert.model_validate_json(first.to_bytes()) == first


def test_a_window_reference_is_named_by_its_length(tmp_path: Path):
    s = summary("eu", "intent", {"label_psi": True}, tmp_path)
    s["reference"] = {"kind": "window", "label": "30d", "version": "v2", "rows": 900}
    [alert] = alerts_of(s, "r", NOW)
    assert alert.reference == "30d"


def test_a_round_skips_empty_windows_isolates_failures_and_collects_alerts(tmp_path: Path):
    from retrain.drift.report import EmptyWindow

    calls = []

    def report(settings, region, model, current, reference, out_dir, now):
        calls.append((region, model, current, reference, Path(out_dir)))
        if model == "empty":
            raise EmptyWindow("no predictions in the window")
        if model == "broken":
            raise RuntimeError("reference.json is missing")
        return summary(region, model, {"label_psi": model == "drifting"}, Path(out_dir))

    heads = [("global", "broken"), ("global", "drifting"), ("global", "empty"), ("global", "steady")]
    done = check_round(None, timedelta(hours=24), "training", tmp_path, heads=heads, now=NOW, report=report)
    assert [c[1] for c in calls] == ["broken", "drifting", "empty", "steady"]
    assert done.checked == [("global", "drifting"), ("global", "steady")]
    assert done.empty == [("global", "empty")]
    assert list(done.failed) == ["global/broken"]
    assert [(a.model, a.metric) for a in done.alerts] == [("drifting", "label_psi")]
    assert calls[1][4] == tmp_path / "global" / "drifting" / "20261128T120000Z"
    assert len({a.check_id for a in done.alerts}) == 1


@pytest.mark.parametrize("bad", [{"value": "x"}, {"threshold": None}])
def test_a_malformed_metric_is_an_error_not_a_silent_pass(tmp_path: Path, bad: dict):
    s = summary("global", "intent", {"label_psi": True}, tmp_path)
    s["metrics"]["label_psi"].update(bad)
    with pytest.raises((TypeError, ValueError)):
        alerts_of(s, "r", NOW)
