# syntax=docker/dockerfile:1
# One image for every CityOS workload: `docker run IMAGE devices` serves the devices service
# (the entrypoint is `cityos serve`, the argument the service's name). Built elsewhere (no Docker
# engine runs on the development machines): see docs/deploy.md, "Building the image".
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: install every workspace member from uv.lock into /opt/cityos ---------------------------
FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/cityos
WORKDIR /src
# Only what the install needs (.dockerignore keeps tests, docs and local state out).
COPY pyproject.toml uv.lock ./
COPY proto/gen/python proto/gen/python
COPY platform platform
COPY services services
# --no-editable: the members are copied into the environment, so the runtime stage needs /opt/cityos only.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-editable \
    && /opt/cityos/bin/cityos services

# ---- runtime: the environment, a non-root user, nothing else --------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="cityos" \
      org.opencontainers.image.description="CityOS services: cityos serve <service>" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 cityos \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/cityos \
       --shell /usr/sbin/nologin cityos \
    && mkdir -p /var/lib/cityos \
    && chown 10001:10001 /var/lib/cityos
COPY --from=build /opt/cityos /opt/cityos
ENV PATH=/opt/cityos/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CITYOS_HOST=0.0.0.0 \
    CITYOS_PORT=50051 \
    CITYOS_VAR_DIR=/var/lib/cityos
WORKDIR /var/lib/cityos
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["cityos", "serve"]
