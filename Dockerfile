# kube-prewarm: `prewarm serve`, `prewarm scaler` and `prewarm replay` in one slim image.
#   docker build -t kube-prewarm:0.1.0 .
# Stage 1 installs the locked set (uv.lock: the versions and hashes CI tests) into a virtual
# environment; stage 2 copies only that venv onto a clean slim Python: no compiler, no pip or uv,
# no sources, a non-root user.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/prewarm UV_PYTHON=/usr/local/bin/python3 UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 UV_COMPILE_BYTECODE=0 UV_LINK_MODE=copy
WORKDIR /src
COPY .ci/uv-requirements.txt ./.ci/
RUN python -m venv /opt/uv \
 && /opt/uv/bin/pip install --require-hashes --only-binary=:all: -r .ci/uv-requirements.txt
COPY pyproject.toml uv.lock README.md ./
COPY prewarm ./prewarm
COPY scaler ./scaler
COPY knative ./knative
# --frozen: exactly uv.lock, never re-resolved; --no-editable: the package itself is copied in; the s3 extra lets the weights follower read S3.
RUN /opt/uv/bin/uv sync --frozen --no-editable --no-dev --extra s3 \
 && find /opt/prewarm -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim-bookworm
COPY --from=build /opt/prewarm /opt/prewarm
ENV PATH=/opt/prewarm/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["prewarm"]
CMD ["serve"]
