# The Capstan runtime image: `capstan server` in deploy/kubernetes and `capstan worker run-step` in pipeline pods.
#   docker build -t capstan-runtime:latest .
# It runs as the numeric user 1000:1000 (the runAsUser of capstan.k8s.pods' restricted pods and of the
# deploy/kubernetes Deployment), needs nothing writable but /tmp (an emptyDir on a cluster), and so works with
# readOnlyRootFilesystem: true.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp \
    CAPSTAN_HOME=/tmp/capstan
COPY --from=build /wheels /wheels
# s3: artifacts in S3-compatible stores; k8s: strict manifest validation. PostgreSQL's driver is a base dependency.
RUN WHEEL="$(ls /wheels/capstan-*.whl)" \
 && pip install --no-cache-dir "${WHEEL}[s3,k8s]" \
 && rm -rf /wheels \
 && groupadd --gid 1000 capstan \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin capstan \
 && mkdir -p /app
# Pipelines baked into a derived image go to /app (`capstan worker run-step` without --code imports from here);
# with --code the step's package is downloaded into /tmp instead.
WORKDIR /app
USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["capstan"]
CMD ["--help"]
