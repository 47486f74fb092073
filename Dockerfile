# rsgrpc server image.
#
#   docker build -t rsgrpc .
#   docker run --init -p 50051:50051 -v "$PWD/data:/data" rsgrpc
#
# `--init` reaps any orphaned worker process; rsgrpc itself handles SIGTERM
# (graceful shutdown within RSGRPC_GRACE_PERIOD_S, 30 s by default, and an
# exit at most 10 s later: give `docker stop --time` at least their sum). Every `rsgrpc serve` flag can be set
# with its RSGRPC_* environment variable, e.g. RSGRPC_MAX_RAM_MIB; download
# deployments with RSGRPC_DEPLOYMENTS (their cache goes under XDG_CACHE_HOME
# unless the file names a cache_dir: mount a volume there to keep it).

# Build stage: install the package and its dependencies into a virtualenv.
# rasterio's wheels bundle GDAL, so no system GDAL is needed.
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY rsgrpc ./rsgrpc
COPY kernels ./kernels
# The project itself, with Dask's distributed (`rsgrpc serve --dask-scheduler`; the same
# image runs `dask scheduler` and `dask worker`, see deploy/), the Redis client for a
# fleet-wide download limit, boto3 for data roots in object storage (`--data-root
# name=s3://bucket/prefix`) and OpenTelemetry (`--tracing true`); its dependencies and
# their versions come from pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[dask,redis,s3,tracing]" \
    && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +

# Final stage: the virtualenv only, run as an unprivileged user.
FROM python:3.11-slim

RUN groupadd --system --gid 10001 rsgrpc \
    && useradd --system --uid 10001 --gid rsgrpc --no-log-init \
        --home-dir /home/rsgrpc --create-home --shell /usr/sbin/nologin rsgrpc \
    && mkdir -p /data /tmp/rsgrpc /home/rsgrpc/.cache/rsgrpc/kernels \
    && chown -R rsgrpc:rsgrpc /data /tmp/rsgrpc /home/rsgrpc/.cache

COPY --from=builder /opt/venv /opt/venv

# NUMBA_CACHE_DIR names the kernel cache for processes that are not rsgrpc's own (`dask
# worker`), so that they load the warmed kernels too; rsgrpc sets it from its own setting.
# A Dask worker's profiler samples every thread's stack 100 times a second, which took
# 3 % of the wall time of benchmarks/bench_dask.py's jobs; rsgrpc's tiles have no use for it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/home/rsgrpc/.cache \
    RSGRPC_KERNEL_CACHE_DIR=/home/rsgrpc/.cache/rsgrpc/kernels \
    NUMBA_CACHE_DIR=/home/rsgrpc/.cache/rsgrpc/kernels \
    DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False \
    RSGRPC_ADDRESS=0.0.0.0:50051 \
    RSGRPC_DATA_ROOT=/data \
    RSGRPC_TEMP_ROOT=/tmp/rsgrpc

# Numeric, so that Kubernetes can check runAsNonRoot.
USER 10001:10001
# Compile every kernel into the server's kernel cache, as the user the server runs as, so that no
# request waits for a compile. A host with another CPU than the build's compiles on first use
# (the server's log says so): run `rsgrpc warm` there, or mount a volume on the cache.
RUN ["rsgrpc", "warm"]
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051

# With TLS on (RSGRPC_TLS_CERT_FILE, RSGRPC_TLS_KEY_FILE), the health check reads its own
# options from the environment too: RSGRPC_CLIENT_TLS_CA_FILE (the CA of the server's
# certificate), RSGRPC_CLIENT_TLS_SERVER_NAME (if that certificate does not name
# 127.0.0.1), and with mutual TLS (RSGRPC_TLS_CLIENT_CA_FILE) a client certificate and
# key the server's client CA signed: RSGRPC_CLIENT_TLS_CERT_FILE, RSGRPC_CLIENT_TLS_KEY_FILE.
# A container that runs `dask scheduler` or `dask worker` from this image needs a health
# check of its own (deploy/compose.yaml gives one).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["rsgrpc", "health", "--target", "127.0.0.1:50051"]

ENTRYPOINT ["rsgrpc"]
CMD ["serve"]
