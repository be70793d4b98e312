"""The comp-sum loss family of the linear probe (Mao, Mohri & Zhong, ICML 2023), with p = softmax(logits):

    ce:  −log p_y        gce: (1 − p_y^q) / q,  q = 0.7 (Zhang & Sabuncu, NeurIPS 2018)        mae: 1 − p_y

mae is gce at q = 1; Ghosh et al.'s ‖e_y − p‖₁ = 2(1 − p_y) is twice it, which would halve the effective C.
"""

from __future__ import annotations

import torch

LOSSES = ("ce", "gce", "mae")
GCE_Q = 0.7


def loss_q(loss: str, q: float) -> float:
    """The exponent q of `loss` in the family: 0 for ce (its limit), q for gce (0 < q ≤ 1), 1 for mae."""
    if loss == "ce":
        return 0.0
    if loss == "gce":
        if not 0 < q <= 1:
            raise ValueError(f"gce needs 0 < q ≤ 1, got {q}")
        return float(q)
    if loss == "mae":
        return 1.0
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def comp_sum_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce", q: float = GCE_Q) -> torch.Tensor:
    """Per-row loss of logits (…, K) at labels (…) (class indices)."""
    qq = loss_q(loss, q)
    lpy = torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return -lpy if qq == 0 else (1 - torch.exp(qq * lpy)) / qq
