# The model server alone: `driftloop[serve]` (ONNX Runtime, FastAPI/uvicorn, Prometheus client), no
# torch, DVC, Prefect, Great Expectations or Evidently. Exact pins: requirements-serve.lock (hashes).
# Not built in CI here (no container runtime on these machines); see README "Install".
#
#   docker build -t driftloop-serve .
#   docker run -p 8080:8080 -v $PWD/model_repository:/models:ro driftloop-serve
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install 'uv==0.13.9'
WORKDIR /src
COPY requirements-serve.lock ./
RUN uv venv /opt/venv && uv pip install --python /opt/venv/bin/python --require-hashes -r requirements-serve.lock
COPY pyproject.toml README.md ./
COPY driftloop ./driftloop
COPY serving ./serving
COPY commands ./commands
RUN uv pip install --python /opt/venv/bin/python --no-deps . \
 && /opt/venv/bin/python -c "import serving.app, commands.main"

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin driftloop
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER driftloop
WORKDIR /home/driftloop
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["driftloop", "serve", "--host", "0.0.0.0", "--port", "8080", "--repository", "/models"]
CMD ["--log-dir", "/home/driftloop/logs"]
