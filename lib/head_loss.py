"""The LM head's cross-entropy at target positions, without the full logits tensor.

Training and log-likelihood scoring need -log p(y | h) only where a label is set. With Gemma's
262k-token vocabulary the head is then the largest single cost of a CPU training step, and the
usual `cross_entropy(head(h), y)` spends much of it outside the two matrix products it needs:
it writes the (tokens x vocabulary) logits, a log-softmax copy of them, a zero-filled gradient
and the softmax gradient, each a full pass over hundreds of megabytes.

`target_nll` does the same arithmetic in one pass per block of target rows (the approach of fused
linear cross-entropy kernels such as Liger-Kernel's, which run on GPUs only):
logits = W h^T (vocabulary-major, which lets BLAS avoid re-packing all of W), max, exp, sum; the
gradient with respect to h, (softmax - onehot) W, is computed in the same pass and kept (tokens x
hidden, small); backward only scales it. It is used where it is exact and faster: a bias-free
`nn.Linear` head with a frozen float32 weight on the CPU (LoRA and QLoRA students). Elsewhere (full
fine-tuning, where the head's own weight needs a gradient; GPUs) the plain form is used.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

ROWS_PER_BLOCK = 256  # target rows per logits block: 256 x 262,144 float32 logits = 268 MB


def target_nll(hidden: torch.Tensor, head: Any, labels: torch.Tensor, softcap: float | None = None,
               rows: int = ROWS_PER_BLOCK) -> torch.Tensor:
    """Per-token -log p(labels | hidden) under the LM head `head` (hidden: (n, d), labels: (n,)), optionally softcapped."""
    weight = getattr(head, "weight", None)
    if _fusable(hidden, head, weight):
        return _HeadNLL.apply(hidden, weight, labels, softcap, rows)
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, reduction="none")


def _fusable(hidden: torch.Tensor, head: Any, weight: Any) -> bool:
    """Whether the blockwise path computes exactly what `head` would: a plain frozen float32 CPU Linear."""
    return (type(head) is torch.nn.Linear and head.bias is None and not weight.requires_grad
            and hidden.device.type == "cpu" and hidden.dtype == weight.dtype == torch.float32)


class _HeadNLL(torch.autograd.Function):
    """-log softmax(W h)[y] per row, with d/dh computed blockwise in the forward pass."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                softcap: float | None, rows: int) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        nll = hidden.new_empty(hidden.shape[0])
        grad = hidden.new_empty(hidden.shape) if need_grad else None
        for lo in range(0, hidden.shape[0], rows):
            h, y = hidden[lo:lo + rows].detach(), labels[lo:lo + rows]
            cols = torch.arange(len(y))
            logits = torch.mm(weight, h.t())  # (vocabulary, rows)
            slope = None
            if softcap:
                logits.div_(softcap).tanh_()
                slope = 1 - logits * logits if need_grad else None  # d softcap(x) / dx
                logits.mul_(softcap)
            top = logits.amax(0)
            picked = logits[y, cols]
            logits.sub_(top).exp_()
            total = logits.sum(0)
            nll[lo:lo + rows] = total.log() + top - picked
            if need_grad:
                logits.div_(total)  # softmax
                logits[y, cols] -= 1
                if slope is not None:
                    logits.mul_(slope)
                grad[lo:lo + rows] = torch.mm(logits.t(), weight)
        ctx.save_for_backward(grad if need_grad else hidden.new_empty(0))
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor) -> tuple:
        (grad,) = ctx.saved_tensors
        return grad * grad_nll[:, None], None, None, None, None
