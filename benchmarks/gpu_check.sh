#!/usr/bin/env bash
# One prepared run on a lent CUDA machine: the GPU path of the pure suites' tests, then the GPU benchmarks.
# It needs torch, torchvision, timm, transformers, numpy, scipy and scikit-learn there (no server stack); where timm
# is missing, `pip install timm transformers` first (the device has no network: bring wheels). Results: RESULTS.md.
set -u
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
OUT=${OUT:-/tmp/repscope-gpu}; mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/unit/test_spectrum.py tests/unit/test_probes.py \
  tests/unit/test_embed.py tests/unit/test_models.py tests/unit/test_layouts.py tests/unit/test_preprocessing.py \
  2>&1 | tail -25
timeout 100 python3 -m benchmarks.bench_spectrum gpu
timeout 180 python3 -m benchmarks.bench_probes gpu
timeout 120 python3 -m benchmarks.bench_embed gpu
timeout 150 python3 -m benchmarks.bench_checkpoint_embed gpu  # bar: >= 90 % of a bare bf16 loop
cp benchmarks/RESULTS.md "$OUT/"
