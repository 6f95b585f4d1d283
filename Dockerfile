# kube-prewarm: `prewarm serve`, `prewarm scaler` and `prewarm replay` in one slim image.
#   docker build -t kube-prewarm:0.1.0 .
# Stage 1 builds a virtual environment from wheels; stage 2 copies only that venv onto a clean
# slim Python: no compiler, no pip cache, no sources, a non-root user.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY prewarm ./prewarm
COPY scaler ./scaler
COPY knative ./knative
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/prewarm \
 && /opt/prewarm/bin/pip install --only-binary=:all: /wheels/*.whl \
 && /opt/prewarm/bin/pip uninstall -y pip \
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
