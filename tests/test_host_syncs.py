"""Counts the host already knows reach the device code without a device->host sync, bit for bit."""

import pytest
import torch

from aia.adapters.base import IGNORE_INDEX, next_token_loss, supervised_tokens


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 11, 16, generator=g, dtype=torch.float32)
    labels = torch.randint(0, 50, (3, 11), generator=g)
    labels[torch.rand(3, 11, generator=g) < 0.4] = IGNORE_INDEX
    head = torch.nn.Linear(16, 50)
    torch.nn.init.normal_(head.weight, generator=g)
    return hidden, labels, head


def _boolean_indexing_loss(hidden, labels, head):
    """next_token_loss as it was: boolean indexing (a sync on accelerators)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep])
    n = int(keep.sum())
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum") / max(n, 1)


def test_next_token_loss_with_the_host_count_is_bit_identical():
    hidden, labels, head = _case()
    n = supervised_tokens(labels)
    results = []
    for fn in (
        lambda h: _boolean_indexing_loss(h, labels, head),
        lambda h: next_token_loss(h, labels, head, n).loss,
        lambda h: next_token_loss(h, labels, head).loss,
    ):
        h = hidden.clone().requires_grad_()
        head.zero_grad()
        loss = fn(h)
        loss.backward()
        results.append((loss.detach(), h.grad, head.weight.grad.clone()))
    for got in results[1:]:
        for a, b in zip(got, results[0], strict=True):
            assert torch.equal(a, b)
    assert next_token_loss(hidden, labels, head, n).num_tokens == n


def test_a_wrong_host_count_is_refused():
    hidden, labels, head = _case()
    with pytest.raises(ValueError, match="next-token targets"):
        next_token_loss(hidden, labels, head, supervised_tokens(labels) + 1)


def test_collate_counts_the_targets_on_the_host():
    from aia.adapters.base import Batch

    assert Batch.__dataclass_fields__["num_targets"].default is None
    batch = Batch(
        "und",
        {},
        torch.full((1, 3), IGNORE_INDEX),
        torch.zeros(1, 3),
        torch.ones(1, 3),
        torch.zeros(1, 3, dtype=torch.bool),
        torch.zeros(1, 3, dtype=torch.bool),
        num_targets=0,
    )
    assert batch.to("cpu").num_targets == 0


def test_flex_gathers_the_query_and_key_rows_once_per_forward(monkeypatch):
    """The gather width (a host sync) is read once per forward pass, not twice per layer."""
    import aia
    import aia.core.intensity as intensity
    from tests.helpers import tiny_llama

    calls = []
    real = intensity._gather
    monkeypatch.setattr(intensity, "_gather", lambda mask: calls.append(mask.shape) or real(mask))
    model = tiny_llama(torch.float32, layers=3)
    ids = torch.randint(1, 97, (2, 20))
    q = torch.zeros(2, 20, dtype=torch.bool)
    q[:, 12:] = True
    k = torch.zeros(2, 20, dtype=torch.bool)
    k[:, 2:9] = True
    with pytest.warns(UserWarning, match="unfused"):
        cap = aia.capture(model, method="flex")
    with torch.no_grad(), cap:
        model(input_ids=ids, aia_query_mask=q, aia_key_mask=k)
        assert len(calls) == 2  # query rows, key rows
        model(input_ids=ids, aia_query_mask=q.clone(), aia_key_mask=k.clone())  # new masks: gathered again
        assert len(calls) == 4
