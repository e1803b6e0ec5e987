"""The LM head on a CPU: cross-entropy at target positions without the full logits, and faster logits for generation.

Training and log-likelihood scoring need -log p(y | h) only where a label is set. With Gemma's
262k-token vocabulary the head is then the largest single cost of a CPU training step, and the
usual `cross_entropy(head(h), y)` spends much of it outside the two matrix products it needs:
it writes the (tokens x vocabulary) logits, a log-softmax copy of them, a zero-filled gradient
and the softmax gradient, each a full pass over hundreds of megabytes.

`target_nll` does the same arithmetic in a single pass over the head's weight W, in blocks of its
rows, with an online softmax (the running max and sum of flash attention; fused linear
cross-entropy kernels such as Liger-Kernel's do this on GPUs only). The gradient with respect to the
hidden states, (softmax - onehot) W, is accumulated in the same pass and kept (tokens x hidden,
small); backward only scales it. Memory is one block of logits instead of all of them.

It is used where it is exact and faster: a bias-free `nn.Linear` head with a float32 weight on the
CPU that needs no gradient (LoRA and QLoRA students; scoring under `torch.no_grad`). Under a bf16
`torch.autocast` (run.precision, lib.precision) its two matrix products take bf16 operands, as autocast
would, while the online softmax and the sums stay in float32. Elsewhere
(full fine-tuning, where the head's own weight needs a gradient; GPUs) the plain form is used.

Generation needs the head's full logits, but for a few rows at a time (one per sequence in the batch
at each decoding step). There `nn.Linear`'s h W^T is slow on a CPU: for 8 rows against Gemma's
(262,144 x 640) W it took 346 ms where the same product taken as W h^T took 77 ms (20 rows: 354 and
188 ms), and the head is most of a decoding step. `vocabulary_major_head` makes the head use W h^T
while a block runs.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

ROWS_PER_BLOCK = 1024  # target rows per pass over W: a logits block is VOCAB_BLOCK x 1024 floats (32 MB)
VOCAB_BLOCK = 8192  # rows of W per block (the fastest of 1k-16k on a 2-core CPU, by a few percent)


def target_nll(hidden: torch.Tensor, head: Any, labels: torch.Tensor, softcap: float | None = None,
               rows: int = ROWS_PER_BLOCK) -> torch.Tensor:
    """Per-token -log p(labels | hidden) under the LM head `head` (hidden: (n, d), labels: (n,)), optionally softcapped."""
    weight = getattr(head, "weight", None)
    if _fusable(hidden, head, weight):
        bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        return _HeadNLL.apply(hidden.float(), weight, labels, softcap, rows, bf16)
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, reduction="none")


def _fusable(hidden: torch.Tensor, head: Any, weight: Any) -> bool:
    """Whether the blockwise path computes exactly what `head` would: a plain float32 CPU Linear needing no gradient."""
    return (type(head) is torch.nn.Linear and head.bias is None
            and not (weight.requires_grad and torch.is_grad_enabled())
            and hidden.device.type == "cpu" and weight.dtype == torch.float32
            and hidden.dtype in (torch.float32, torch.bfloat16))


class _HeadNLL(torch.autograd.Function):
    """-log softmax(softcap(W h))[y] per row, with d/dh computed in the same single pass over W.

    W is read once, in blocks of `VOCAB_BLOCK` rows, with an online softmax (as flash attention does):
    for each block, z = softcap(W_b h^T); the running column max m, the running sum s = Σ exp(z - m)
    and the running acc = Σ (exp(z - m) * softcap'(z))^T W_b are rescaled whenever m grows. At the end
    nll = log(s) + m - z_y and d nll/dh = acc / s - softcap'(z_y) W_y.

    z_y is taken from the block that holds it, the very number that entered the log-sum-exp, and the gradient uses the
    W that produced it. Under bf16 both are the bf16 product and the bf16 copy of W: then nll >= 0 always, and the
    gradient is the gradient of the value returned. (Taking z_y from the float32 W instead, as this once did, let
    training raise z_y past a log-sum-exp that never saw it: a loss of -0.6 after 225 bf16 steps.)
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                softcap: float | None, rows: int, bf16: bool = False) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        operand = _bf16_copy(weight) if bf16 else weight
        nll = hidden.new_empty(hidden.shape[0])
        grad = hidden.new_empty(hidden.shape) if need_grad else None
        for lo in range(0, hidden.shape[0], rows):
            h, y = hidden[lo:lo + rows].detach(), labels[lo:lo + rows]
            top = h.new_full((len(y),), float("-inf"))
            total = h.new_zeros(len(y))
            acc = h.new_zeros(h.shape) if need_grad else None
            buffer = h.new_empty(VOCAB_BLOCK, len(y))
            h_op = h.to(torch.bfloat16) if bf16 else h
            picked = h.new_empty(len(y))  # z_y, read from the same product as the log-sum-exp
            for v in range(0, weight.shape[0], VOCAB_BLOCK):
                w = operand[v:v + VOCAB_BLOCK]
                if bf16:
                    z = torch.mm(w, h_op.t()).float()
                else:  # (block, rows): measured faster on CPU than h @ w.T
                    z = torch.mm(w, h.t(), out=buffer[:len(w)])
                if softcap:
                    z.div_(softcap).tanh_().mul_(softcap)
                here = ((y >= v) & (y < v + len(w))).nonzero().squeeze(1)
                picked[here] = z[y[here] - v, here]
                new_top = torch.maximum(top, z.amax(0))
                rescale = torch.exp(top - new_top)  # 0 on the first block, where top is -inf
                slope = 1 - (z / softcap) ** 2 if softcap and need_grad else None  # d softcap(x) / dx
                z.sub_(new_top).exp_()
                total.mul_(rescale).add_(z.sum(0))
                if need_grad:
                    scaled = (z if slope is None else z.mul_(slope)).t()
                    acc.mul_(rescale[:, None])
                    if bf16:
                        acc.add_(torch.mm(scaled.to(torch.bfloat16), w).float())
                    else:
                        acc.addmm_(scaled, w)
                top = new_top
            nll[lo:lo + rows] = total.log() + top - picked
            if need_grad:
                slope_y = 1 - (picked / softcap) ** 2 if softcap else torch.ones_like(picked)
                grad[lo:lo + rows] = acc / total[:, None] - slope_y[:, None] * operand[y].float()
        ctx.save_for_backward(grad if need_grad else hidden.new_empty(0))
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: torch.Tensor) -> tuple:
        (grad,) = ctx.saved_tensors
        return grad * grad_nll[:, None], None, None, None, None, None


_BF16_COPY: list = []  # [weakref to the head weight, its version, its bf16 copy]: one head at a time (Gemma's: 335 MB)


def _bf16_copy(weight: torch.Tensor) -> torch.Tensor:
    """A bf16 copy of a frozen head weight, made once per weight and version (not again at every step).

    The copy is tied to the tensor object itself (a weak reference), not to its address: another model's head
    allocated where a freed one was must never be read through the old copy.
    """
    if not _BF16_COPY or _BF16_COPY[0]() is not weight or _BF16_COPY[1] != weight._version:
        _BF16_COPY[:] = [weakref.ref(weight), weight._version, weight.detach().to(torch.bfloat16)]
    return _BF16_COPY[2]


class _VocabularyMajorLinear(torch.nn.Linear):
    """A bias-free `nn.Linear` whose product is taken as W x^T, the faster order on a CPU for a few rows against a large W."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        flat = x.reshape(-1, x.shape[-1])
        return torch.mm(self.weight, flat.t()).t().contiguous().reshape(*x.shape[:-1], self.out_features)


@contextmanager
def vocabulary_major_head(model: Any) -> Iterator[None]:
    """While the block runs, the model's LM head computes W h^T instead of h W^T (a bias-free float32 CPU Linear only)."""
    head = model.get_output_embeddings()
    swap = (type(head) is torch.nn.Linear and head.bias is None
            and head.weight.device.type == "cpu" and head.weight.dtype == torch.float32)
    if swap:
        head.__class__ = _VocabularyMajorLinear  # same parameters and hooks; only forward differs
    try:
        yield
    finally:
        if swap:
            head.__class__ = torch.nn.Linear
