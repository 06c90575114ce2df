# Ripple worker / sink / simulator image.
FROM python:3.11.11-slim-bookworm
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY ripple ripple
COPY streams streams
COPY sinks sinks
COPY schemas schemas
COPY deploy/clickhouse deploy/clickhouse
# fraud thresholds and lists: every command loads them at start (streams/fraud.py)
COPY deploy/fraud deploy/fraud
# editable: schemas/ and deploy/ are read from beside the packages
RUN pip install --no-cache-dir -e . && useradd --system --uid 10001 ripple && mkdir /data && chown ripple /data
USER ripple
ENV RIPPLE_DATA_DIR=/data RIPPLE_WEB_HOST=0.0.0.0
ENTRYPOINT ["ripple"]
