# The runtime and the MySQL/TiDB driver from requirements-prod.lock (hashes checked); no test
# tools. mysqlclient is compiled in the build stage; the final image has the client library only.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends libmariadb-dev pkg-config gcc \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
COPY requirements-prod.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes \
    -r requirements-prod.lock

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends libmariadb3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY . .
RUN DEBUG=1 python manage.py collectstatic --noinput
EXPOSE 8000
CMD ["uvicorn", "gateway.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--timeout-graceful-shutdown", "30", "--no-access-log"]
