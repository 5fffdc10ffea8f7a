FROM python:3.11-slim AS build
COPY . /src
RUN python -m venv /opt/mailgate && /opt/mailgate/bin/pip install --no-cache-dir /src

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/mailgate --create-home mailgate
COPY --from=build /opt/mailgate /opt/mailgate
ENV PATH=/opt/mailgate/bin:$PATH PYTHONUNBUFFERED=1 \
    MAILGATE_STORAGE_URL=sqlite:////var/lib/mailgate/mailgate.db \
    MAILGATE_LMTP_LISTEN=0.0.0.0:8024 \
    MAILGATE_HTTP_LISTEN=0.0.0.0:9024
USER 10001
WORKDIR /var/lib/mailgate
VOLUME /var/lib/mailgate
EXPOSE 8024 9024
HEALTHCHECK --interval=30s --timeout=3s --start-period=15s --retries=3 \
  CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:9024/healthz', timeout=2)" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["mailgate"]
CMD ["serve"]
