# partner-guard: the streaming job. Build: docker build -t partner-guard .
# Stage 1 builds the wheel; stage 2 installs only the wheel (no source tree, no editable install).
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY schemas ./schemas
RUN pip wheel --no-deps --wheel-dir /dist .

FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN groupadd --system --gid 10001 guard && useradd --system --uid 10001 --gid guard --no-create-home guard

COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-compile /tmp/dist/partner_guard-*.whl && rm -rf /tmp/dist
# the rules are the operator's: these are the shipped defaults; mount your own over /app/rules
COPY rules ./rules
RUN partner-guard --version --rules rules && partner-guard rules check rules

# the disk state store (state_store: rocksdb) lives on a volume so restarts resume from its checkpoint
RUN mkdir -p /var/lib/partner-guard && chown guard:guard /var/lib/partner-guard
ENV PARTNER_GUARD_STATE_DIR=/var/lib/partner-guard/state
VOLUME /var/lib/partner-guard

USER guard:guard
ENV PARTNER_GUARD_RULES_DIR=/app/rules
EXPOSE 9108
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["partner-guard"]
CMD ["run"]
