# kaixu in a container: the gateway on /etc/kaixu/proxy.yaml (mount your own), listening on 0.0.0.0:4000 with one
# worker process per core the container may use (docs/operations.md#workers).
#   docker build -t kaixu . && docker run -p 4000:4000 -v $PWD/proxy.yaml:/etc/kaixu/proxy.yaml kaixu
FROM python:3.13-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY kaixu ./kaixu
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/kaixu --create-home kaixu

# The store (store.sqlite) and mitmproxy's confdir live next to the policy file: keep that folder writable.
COPY proxy.yaml /etc/kaixu/proxy.yaml
RUN chown -R kaixu /etc/kaixu
USER kaixu
WORKDIR /var/lib/kaixu
EXPOSE 4000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/health')"
ENTRYPOINT ["kaixu", "run", "/etc/kaixu/proxy.yaml", "--listen", "0.0.0.0:4000", "--workers", "auto"]
