# mcdropout gRPC server: Monte Carlo dropout predictions with uncertainty.
#
#   docker build -t mcdropout:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 --stop-timeout 30 mcdropout:0.1.0
#
# Two stages: the builder resolves the pinned dependencies (deploy/constraints.txt), installs the
# project into a virtual environment and trains the built-in default models; the final stage gets
# only that environment and the model store, runs as an unprivileged user and has no pip cache,
# no sources and no build tools. See deploy/README.md.

# ---- builder -------------------------------------------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Every dependency of the project comes with a manylinux wheel for CPython 3.11, so no compiler is
# installed even here; the stage exists to keep pip's work and the sources out of the final image.
RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies first, in their own layer: it is reused while only the project's code changes.
COPY deploy/constraints.txt deploy/constraints.txt
RUN pip install --no-cache-dir --requirement deploy/constraints.txt

COPY pyproject.toml README.md ./
COPY mcdropout mcdropout
COPY server server
COPY client client
# The project itself, offline: every dependency must already be there at its pinned version, so a
# requirement missing from deploy/constraints.txt fails the build instead of pulling in whatever
# is newest. Then a consistency check of the whole environment.
RUN pip install --no-cache-dir --no-index --no-build-isolation \
        --constraint deploy/constraints.txt ./client ".[server]" \
    && pip check

# The built-in default models (diabetes, iris), trained here from data shipped in the package, so
# the image serves something with no volume mounted (seeded; seconds of CPU).
ENV TF_CPP_MIN_LOG_LEVEL=2 KERAS_HOME=/tmp/keras
# The store writes each version through a private (0700) temporary directory: open it up for reading
# by the server's user.
RUN mcdropout make-default-models --model-root /models \
    && rm -f /models/.default-store.lock \
    && chmod -R a+rX,go-w /models

# ---- runtime -------------------------------------------------------------------------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="mcdropout" \
      org.opencontainers.image.description="Monte Carlo dropout as a gRPC service: predictions with calibrated uncertainty" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --gid 10001 mcdropout \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mcdropout

COPY --from=builder /opt/venv /opt/venv
# Owned by root, readable by all: the server's user reads the store and cannot change it.
COPY --from=builder /models /models

# The server reads every setting from MCDROPOUT_* variables (`mcdropout serve --help` lists them);
# those set here are the image's defaults and can be overridden with `docker run -e`.
# HOME and KERAS_HOME point at /tmp, the only place the process writes (Keras' config), so the
# root file system can be mounted read-only. No MPLCONFIGDIR: the image has no matplotlib (the
# `report` extra; serving never plots).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    KERAS_HOME=/tmp/keras \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MCDROPOUT_MODEL_ROOT=/models \
    MCDROPOUT_HOST=0.0.0.0 \
    MCDROPOUT_PORT=50051 \
    MCDROPOUT_METRICS_PORT=9090 \
    MCDROPOUT_GRACE_SECONDS=20 \
    MCDROPOUT_LOG_FORMAT=json

# Mount your own model store (<root>/<name>/<version>/) here, read-only; the default models baked
# in above are what an unmounted /models holds.
VOLUME ["/models"]
WORKDIR /tmp
USER 10001:10001

# gRPC, Prometheus metrics
EXPOSE 50051 9090

# The standard gRPC health service, asked by the client CLI that the image already has (no extra
# binary). Through sh so the check follows MCDROPOUT_PORT; start-period covers loading and warming
# up the models. Exit 1 (unhealthy) unless the server answers SERVING within 5 s.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "mcdropout-client health --target \"127.0.0.1:${MCDROPOUT_PORT}\" --timeout 5 --retries 0 >/dev/null || exit 1"]

# Exec form: the server is PID 1 and receives SIGTERM itself. It then reports NOT_SERVING, refuses
# new requests, lets in-flight ones finish within MCDROPOUT_GRACE_SECONDS and exits 0, so give
# `docker stop` more time than that (docker stop -t 30 / docker run --stop-timeout 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["mcdropout", "serve"]
