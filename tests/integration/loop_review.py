"""The expert-loop test's scripted reviewer: the review page (``phrasestream review``) over real HTTP.

It uses the page's routes as docs/review.md gives them: basic auth on every request, the CSRF
token from ``GET /api/csrf`` in every POST, ``GET /api/items`` for the open queue,
``GET /items/<id>`` (JSON) for an item and the labels it may get, and
``POST /items/<id>/answer`` with ``outcome`` and ``label``. Waits are on the queue holding the
items asked for; the bound only turns a hang into a failure.
"""

from __future__ import annotations

import time
from typing import Any

import requests
from bounds import BOUND_S, POLL_S


class Reviewer:
    """One reviewer of the review page at ``base`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, base: str, name: str, password: str) -> None:
        self.base, self.name = base.rstrip("/"), name
        self.http = requests.Session()
        self.http.auth = (name, password)
        self.http.headers["Accept"] = "application/json"
        self._csrf: str | None = None

    def _get(self, path: str, **params: Any) -> Any:
        res = self.http.get(self.base + path, params=params, timeout=60)
        assert res.status_code == 200, f"GET {path}: {res.status_code} {res.text[:500]}"
        return res.json()

    def csrf(self) -> str:
        if self._csrf is None:
            got = self._get("/api/csrf")
            assert got["reviewer"] == self.name
            self._csrf = str(got["csrf"])
        return self._csrf

    def wait_queue(self, region: str, model: str, item_ids: set[str]) -> dict[str, dict]:
        """Wait until the reviewer's open queue of the head holds every item of ``item_ids``; return them by id."""
        start = time.monotonic()
        while True:
            items = {i["item_id"]: i for i in self._get("/api/items", region=region, model=model, limit=500)}
            missing = item_ids - set(items)
            if not missing:
                return {k: v for k, v in items.items() if k in item_ids}
            assert time.monotonic() - start < BOUND_S, \
                f"{len(missing)} of {len(item_ids)} items never reached the review page's queue"
            time.sleep(POLL_S)

    def progress(self) -> dict:
        """The progress panel's figures (``GET /api/progress``)."""
        return self._get("/api/progress")

    def item(self, item_id: str) -> dict:
        """The item page's data (JSON): the item, its answers, and the labels it may be given."""
        return self._get(f"/items/{item_id}")

    def _post(self, item_id: str, fields: dict[str, str]) -> dict:
        res = self.http.post(f"{self.base}/items/{item_id}/answer", data={"csrf": self.csrf(), **fields}, timeout=60)
        assert res.status_code == 200, f"answer {item_id}: {res.status_code} {res.text[:500]}"
        return res.json()

    def answer(self, item_id: str, label: str) -> dict:
        """Give ``label`` (the page must offer it); return what the page recorded."""
        offered = self.item(item_id)["labels"]
        assert label in offered, f"the page does not offer {label!r} for item {item_id}"
        recorded = self._post(item_id, {"outcome": "label", "label": label})
        assert recorded["outcome"] == "label" and recorded["label"] == label and recorded["produced"], recorded
        return recorded

    def skip(self, item_id: str) -> dict:
        recorded = self._post(item_id, {"outcome": "skip"})
        assert recorded["outcome"] == "skip" and not recorded["produced"], recorded
        return recorded

    def refused(self, item_id: str, fields: dict[str, str], csrf: bool = True) -> tuple[int, str]:
        """POST an answer that must be refused; return (status, message) and assert it is a 4xx."""
        data = {"csrf": self.csrf(), **fields} if csrf else fields
        res = self.http.post(f"{self.base}/items/{item_id}/answer", data=data, timeout=60)
        assert 400 <= res.status_code < 500, f"{res.status_code} {res.text[:300]}"
        return res.status_code, res.json()["error"]
