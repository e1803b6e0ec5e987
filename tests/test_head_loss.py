"""The blockwise LM-head loss: the same values and gradients as cross-entropy over full logits."""

import pytest
import torch
import torch.nn.functional as F

from lib.head_loss import _fusable, target_nll


def reference_nll(hidden, head, labels, softcap=None):
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, reduction="none")


def frozen_head(vocab=50, dim=8, seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(dim, vocab, bias=False)
    head.weight.requires_grad_(False)
    return head


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("rows", [1, 3, 256])
@pytest.mark.parametrize("vocab_block", [7, 8192])  # several blocks (online softmax rescaling), or one
def test_values_and_gradients_match_full_logits(softcap, rows, vocab_block, monkeypatch):
    monkeypatch.setattr("lib.head_loss.VOCAB_BLOCK", vocab_block)
    head = frozen_head()
    assert _fusable(torch.zeros(1, 8), head, head.weight)
    hidden = (torch.randn(7, 8) * 4).requires_grad_()  # large logits: the max subtraction matters
    labels = torch.tensor([0, 49, 3, 3, 17, 25, 8])
    scale = torch.linspace(0.5, 2.0, 7)  # unequal weights per token, as the per-task means give
    ours = target_nll(hidden, head, labels, softcap, rows=rows)
    (grad_ours,) = torch.autograd.grad((ours * scale).sum(), hidden)
    ref = reference_nll(hidden, head, labels, softcap)
    (grad_ref,) = torch.autograd.grad((ref * scale).sum(), hidden)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-4, atol=1e-6)


def test_no_grad_gives_the_same_values_even_for_a_trainable_head():
    head, hidden, labels = torch.nn.Linear(8, 50, bias=False), torch.randn(5, 8), torch.tensor([1, 2, 3, 4, 5])
    with torch.no_grad():
        assert _fusable(hidden, head, head.weight)  # scoring a merged student: no graph, so the fast path
        ours = target_nll(hidden, head, labels, rows=2)
        ref = reference_nll(hidden, head, labels)
    torch.testing.assert_close(ours, ref)


def test_a_trainable_head_takes_the_plain_path_and_gets_its_gradient():
    head = torch.nn.Linear(8, 50, bias=False)  # full fine-tuning: the head's weight needs a gradient
    assert not _fusable(torch.zeros(1, 8), head, head.weight)
    target_nll(torch.randn(4, 8), head, torch.tensor([1, 2, 3, 4])).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_no_target_rows_give_an_empty_loss():
    head = frozen_head()
    out = target_nll(torch.zeros(0, 8, requires_grad=True), head, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)


def test_vocabulary_major_head_gives_the_same_logits_and_restores_the_head():
    from lib.head_loss import vocabulary_major_head
    from lib.models import load_causal_lm, TINY_GEMMA

    model = load_causal_lm(TINY_GEMMA)
    ids = torch.randint(0, model.config.vocab_size, (3, 5))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with vocabulary_major_head(model):
            assert type(model.get_output_embeddings()) is not torch.nn.Linear
            swapped = model(input_ids=ids).logits
    torch.testing.assert_close(swapped, plain, rtol=1e-5, atol=1e-5)
    assert swapped.is_contiguous()
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    with pytest.raises(RuntimeError), vocabulary_major_head(model):
        raise RuntimeError("generation failed")
    assert type(model.get_output_embeddings()) is torch.nn.Linear  # restored on the way out of an error too


def test_vocabulary_major_head_leaves_other_heads_alone():
    from lib.head_loss import vocabulary_major_head

    class WithBias(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 6, bias=True)

        def get_output_embeddings(self):
            return self.head

    model = WithBias()
    with vocabulary_major_head(model):
        assert type(model.head) is torch.nn.Linear
    model.head = model.head.double()
    model.head.bias = None
    with vocabulary_major_head(model):
        assert type(model.head) is torch.nn.Linear  # float64: not the path it was measured for


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_under_bf16_autocast_the_blockwise_path_matches_autocast_full_logits(softcap, monkeypatch):
    """run.precision bf16: the head's products take bf16 operands; values and gradients agree with autocast's own."""
    monkeypatch.setattr("lib.head_loss.VOCAB_BLOCK", 7)
    head = frozen_head(vocab=300, dim=32)
    hidden = (torch.randn(9, 32) * 2).requires_grad_()
    labels = torch.randint(0, 300, (9,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = target_nll(hidden, head, labels, softcap)
        ref = reference_nll(hidden, head, labels, softcap)
    (grad_ours,) = torch.autograd.grad(ours.sum(), hidden)
    (grad_ref,) = torch.autograd.grad(ref.sum(), hidden)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=5e-2, atol=2e-2)
    exact = reference_nll(hidden.detach(), head, labels, softcap)
    assert not torch.equal(ours.detach(), exact), "the bf16 path must really compute in bf16"


def test_the_bf16_head_copy_follows_the_weight_not_its_address(monkeypatch):
    """A new head (another student) or an edited one is never read through an earlier head's bf16 copy."""
    import numpy as np

    from lib.head_loss import _bf16_copy

    memory = np.zeros((40, 8), dtype=np.float32)
    first = torch.from_numpy(memory)
    assert torch.equal(_bf16_copy(first), first.to(torch.bfloat16))
    memory[:] = 5.0  # new weights at the same address, as when a freed head's memory is reused
    second = torch.from_numpy(memory)
    assert second.data_ptr() == first.data_ptr() and second._version == first._version
    assert torch.equal(_bf16_copy(second), second.to(torch.bfloat16))
    with torch.no_grad():
        second.add_(1.0)  # same tensor, new version
    assert torch.equal(_bf16_copy(second), second.to(torch.bfloat16))


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_bf16_training_along_the_returned_gradient_never_drives_the_nll_below_zero(softcap):
    """Pushing the hidden states down the bf16 path's own gradient (what training does) keeps every NLL >= 0 and on
    the float32 full-logits cross-entropy.

    With z_y taken from the float32 weight while the log-sum-exp saw bf16 products, the gradient near convergence is
    the rounding error W_bf16[y] - W[y], and descent along it made the NLL negative (-0.02 here; -0.6 in a real run).
    """
    torch.manual_seed(0)
    head = frozen_head(vocab=3000, dim=64)
    hidden = torch.randn(16, 64).requires_grad_()
    labels = torch.randint(0, 3000, (16,))
    optimiser = torch.optim.SGD([hidden], lr=1.0)
    lowest = float("inf")
    for _ in range(300):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nll = target_nll(hidden, head, labels, softcap)
        lowest = min(lowest, float(nll.detach().min()))
        optimiser.zero_grad()
        nll.sum().backward()
        optimiser.step()
    assert lowest >= 0, f"a bf16 NLL went to {lowest}"
    with torch.no_grad():
        exact = reference_nll(hidden, head, labels, softcap)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = target_nll(hidden, head, labels, softcap)
    assert float(exact.mean()) < 0.1  # it did converge: the regime where the old mismatch showed
    torch.testing.assert_close(ours, exact, rtol=0, atol=5e-3)
