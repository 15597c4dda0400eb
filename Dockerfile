# iron-defer-trio server image. Build: docker build -t iron-defer-trio .
# Run:   docker run -e DATABASE_URL=postgresql://... -e IRON_DEFER__TASKS__MODULES=myapp.tasks \
#          -p 8080:8080 iron-defer-trio
# Your task modules must be importable in the image: build FROM this image and copy them in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged account: the server needs no root, and neither does PostgreSQL access.
RUN groupadd --system --gid 10001 iron \
 && useradd --system --uid 10001 --gid iron --home-dir /app --shell /usr/sbin/nologin iron

WORKDIR /app
COPY pyproject.toml README.md ./
COPY iron_defer_trio ./iron_defer_trio
COPY migrations ./migrations
COPY examples ./examples
RUN pip install . && chown -R iron:iron /app

USER 10001:10001
# In a container the API must listen beyond loopback; still set server.api_token.
ENV IRON_DEFER__SERVER__HOST=0.0.0.0 \
    IRON_DEFER__TASKS__MODULES=examples.demo_tasks
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=2).status == 200 else 1)"]

# exec form: the server is PID 1's only child and receives SIGTERM directly.
ENTRYPOINT ["iron-defer-trio"]
CMD ["serve"]
