# Stalwart worker / supervisor image. The entrypoint is the `stalwart` command:
#   docker run IMAGE worker package.module:app
#   docker run IMAGE supervisor
# Both need STALWART_NATS_URL and STALWART_REDIS_URL (see docs/configuration.md).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STALWART_LOG_FORMAT=json

RUN groupadd --system --gid 10001 stalwart \
 && useradd --system --uid 10001 --gid stalwart --home-dir /app --shell /usr/sbin/nologin stalwart

# Only what the package build needs; tests, docs and benchmarks stay out of the image.
COPY pyproject.toml README.md /build/
COPY src/ /build/src/
RUN pip install /build && rm -rf /build

# `stalwart worker module:app` imports from the working directory: put your agents here
# (COPY in a derived image, or a volume).
WORKDIR /app
RUN chown stalwart:stalwart /app
USER 10001:10001

ENTRYPOINT ["stalwart"]
CMD ["--help"]
