# The streamlearner worker image. CPU torch by default; compose's gpu profile builds it with
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 TORCH_SPEC=torch.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    METRICS_HOST=0.0.0.0 \
    OMP_WAIT_POLICY=PASSIVE \
    OPENBLAS_NUM_THREADS=1 \
    CHECKPOINT_DIR=/var/lib/streamlearner/checkpoints

WORKDIR /app
# torch first, from its own index: an unpinned torch from PyPI would pull a multi-GB CUDA build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
# Every package of pyproject's [tool.setuptools.packages.find] (tests/monitoring/test_stack.py).
COPY streamlearner ./streamlearner
COPY streams ./streams
COPY learner ./learner
COPY lifecycle ./lifecycle
COPY serving ./serving
COPY monitoring ./monitoring
COPY tools ./tools
COPY tuning ./tuning
COPY tracking ./tracking
COPY bench ./bench
# mlflow for the tracking profile (TRACKING_URI); off unless configured.
RUN pip install ".[tracking]"
# The sample data, for the compose `demo` profile (`streamlearner publish ... data/demo/...`).
COPY data ./data

RUN useradd --system --uid 10001 streamlearner \
    && mkdir -p /var/lib/streamlearner/checkpoints \
    && chown -R streamlearner /var/lib/streamlearner
USER streamlearner
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=6 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '6066'), timeout=3)"
ENTRYPOINT ["streamlearner"]
CMD ["worker"]
