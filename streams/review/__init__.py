"""The review page and its rules: where domain experts answer the phrases a head doubts (issue 18, part 3).

- ``server``: ``phrasestream review``, the aiohttp app and its routes; ``service``: what an
  answer does (check, produce to ``phrases.labeled``, store); ``store``: the tables;
  ``ingest``: the consumer of ``phrases.review``; ``security``: reviewers, basic auth, CSRF;
  ``guide``: each label's guideline; ``pages``: the HTML; ``stats`` and ``progress``: the
  progress panel's estimators; ``labelsets``: ``phrasestream label-map``;
  ``rules``: ``phrasestream review-rule``.

Nothing here is imported by the worker: the commands import it inside themselves.
"""
