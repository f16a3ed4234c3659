# bagstress-locust: Locust + the plugin + the sample conversations, run as a non-root user.
#
#   docker build -t bagstress-locust .
#   docker run --rm -p 127.0.0.1:8089:8089 bagstress-locust                  # web UI, built-in simulator
#   docker run --rm -e OPENAI_API_KEY bagstress-locust --headless -u 10 -t 1m --host https://api.openai.com/v1
#   docker run --rm -v "$PWD/my-chats:/app/conversations:ro" bagstress-locust --headless -u 5 -t 1m
#
# No .env and no key are baked in: pass OPENAI_API_KEY at run time (-e, --env-file, or compose's env_file).
# docker-compose.yml runs the same image as a simulated endpoint, a master and N workers.

# ---- build: resolve and install the pinned dependencies into /app/.venv with uv -----------------------
FROM python:3.11-slim AS build

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install uv==0.13.9

WORKDIR /app

# No uv.lock is committed: pyproject.toml pins the whole resolved set in [tool.uv] constraint-dependencies.
# Dependencies first, in their own layer, so editing the code does not reinstall them.
COPY pyproject.toml README.md ./
RUN uv sync --no-dev --no-install-project

COPY bagstress_locust/ bagstress_locust/
RUN uv sync --no-dev --no-editable

# ---- runtime: the venv, the locustfile and the conversations; no uv, no build tools ------------------
FROM python:3.11-slim

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN groupadd --system --gid 10001 bagstress \
    && useradd --system --uid 10001 --gid bagstress --home-dir /home/bagstress --create-home \
        --shell /usr/sbin/nologin bagstress \
    && mkdir -p /app/reports \
    && chown bagstress:bagstress /app/reports

WORKDIR /app

# The venv's python links to /usr/local/bin/python3, the same in both stages (same base image).
COPY --from=build /app/.venv /app/.venv
COPY locustfile.py ./
# Baked in; mount a folder at /app/conversations to replay other conversations.
COPY conversations/ conversations/

USER bagstress

# 8089: Locust's web UI (master or standalone); 5557: where workers connect to the master.
EXPOSE 8089 5557

# Write --csv/--html reports under /app/reports (writable by the user; mount a volume there to keep them).
ENTRYPOINT ["locust", "-f", "/app/locustfile.py"]
