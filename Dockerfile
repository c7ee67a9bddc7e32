# The prediction service (chapter 3). Build from the project root:
#   docker build -t hdb-mlops-serve .
#   docker run -p 8080:8080 -v "$PWD/models/xgboost:/opt/ml/model:ro" hdb-mlops-serve
# The image serves the bundle in /opt/ml/model (where SageMaker unpacks model.tar.gz); set
# HDB_MLOPS_MODEL to another bundle directory, or to a registry version/alias together with
# MLFLOW_TRACKING_URI, to serve something else.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HDB_MLOPS_MODEL=/opt/ml/model

WORKDIR /app

# Dependencies first (their layer is rebuilt only when the lock changes): the serving and
# registry extras, every version pinned by requirements.lock used as a constraints file.
COPY requirements.lock pyproject.toml README.md ./
COPY hdb_mlops ./hdb_mlops
RUN pip install --constraint requirements.lock ".[serve,track]" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
    && mkdir -p /opt/ml/model \
    && chown -R app:app /app /opt/ml

USER app

EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]

ENTRYPOINT ["hdb-mlops", "serve", "--host", "0.0.0.0", "--port", "8080"]
