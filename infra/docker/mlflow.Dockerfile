# syntax=docker/dockerfile:1
# The MLflow tracking server of infra/mlflow/: the same mlflow (and boto3) versions as the project's clients
# (requirements.lock), plus the PostgreSQL driver of its backend store. No credentials baked in: the backend-store
# password and the S3 keys come from Kubernetes Secrets at run time.
#
#   docker build -f infra/docker/mlflow.Dockerfile -t $REGISTRY/sgmg-mlflow:3.17.2 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
COPY requirements.lock /tmp/requirements.lock
RUN pip install -c /tmp/requirements.lock mlflow==3.17.2 boto3 psycopg2-binary==2.9.13 \
 && rm /tmp/requirements.lock \
 && useradd --uid 1000 --user-group --create-home mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--help"]
