"""The probes' matrix product: on the CPU through numpy's BLAS (OpenBLAS, zero-copy) instead of torch's.

torch's CPU wheels call MKL, whose sgemm runs well below OpenBLAS's on AMD processors and not faster on Intel
ones (benchmarks/RESULTS.md). Same product, another summation order: results agree to float rounding.
"""

from __future__ import annotations

import numpy as np
import torch

_NUMPY_GEMM_DTYPES = (torch.float32, torch.float64)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b; through np.matmul when both are float32 / float64 CPU tensors of one dtype."""
    if a.device.type == "cpu" and b.device.type == "cpu" and a.dtype == b.dtype and a.dtype in _NUMPY_GEMM_DTYPES:
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    return a @ b
