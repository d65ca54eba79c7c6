"""The AIA loss against values computed by hand."""

import pytest
import torch

from aia.core.loss import aia_loss, huber, total_loss


def test_huber_matches_torch_semantics():
    x = torch.tensor([-0.5, -0.1, 0.0, 0.04, 0.3])
    for d in (0.05, 0.1, 0.2):
        want = torch.nn.HuberLoss(reduction="none", delta=d)(x, torch.zeros_like(x))
        torch.testing.assert_close(huber(x, torch.full_like(x, d)), want)


def test_aia_loss_by_hand():
    # 2 layers, 3 samples; sample 2 is excluded (e.g. a CFG-blanked prompt)
    intensity = torch.tensor([[0.50, 0.38, 0.90], [0.10, 0.35, 0.00]])
    target = torch.tensor([0.40, 0.30])
    delta = torch.tensor([0.20, 0.05])
    valid = torch.tensor([True, True, False])
    # layer 0: x = 0.10, -0.02 -> quadratic: 0.005, 0.0002
    # layer 1: x = -0.20 -> linear: 0.05 * (0.20 - 0.025) = 0.00875 ; x = 0.05 -> quadratic 0.00125
    s0 = (0.005 + 0.00875) / 2
    s1 = (0.0002 + 0.00125) / 2
    got = aia_loss(intensity, target, delta, valid, denominator="enabled")
    assert got.item() == pytest.approx((s0 + s1) / 2, abs=1e-7)
    # the released denominator (default): the excluded sample adds 0 but counts, / (L x B)
    assert aia_loss(intensity, target, delta, valid).item() == pytest.approx((s0 + s1) / 3, abs=1e-7)
    # w/o Huber: plain 0.5 x^2
    m0 = (0.5 * 0.1**2 + 0.5 * 0.2**2) / 2
    m1 = (0.5 * 0.02**2 + 0.5 * 0.05**2) / 2
    mse = aia_loss(intensity, target, delta, valid, mode="mse", denominator="enabled")
    assert mse.item() == pytest.approx((m0 + m1) / 2, abs=1e-7)


def test_all_denominator_is_the_released_sum_over_layers_and_samples():
    # modeling_vlm.py:285-310: one nn.HuberLoss per (layer, sample), blanked samples times 0, / (L * B)
    torch.manual_seed(0)
    intensity = torch.rand(5, 4, dtype=torch.float64)
    target, delta = torch.rand(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 0.3 + 0.01
    valid = torch.tensor([True, False, True, True])
    want = 0.0
    for layer in range(5):
        criterion = torch.nn.HuberLoss(delta=float(delta[layer]))
        for b in range(4):
            term = criterion(intensity[layer, b], target[layer])
            want = want + (term if valid[b] else term * 0)
    want = want / (5 * 4)
    torch.testing.assert_close(aia_loss(intensity, target, delta, valid, denominator="all").double(), want)
    with pytest.raises(ValueError, match="denominator"):
        aia_loss(intensity, target, delta, valid, denominator="batch")


def test_no_enabled_sample_gives_zero_with_grad():
    intensity = torch.rand(4, 2, requires_grad=True)
    loss = aia_loss(intensity, torch.zeros(4), torch.ones(4), torch.tensor([False, False]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(intensity.grad, torch.zeros(4, 2))


def test_gradient_is_clipped_outside_delta():
    intensity = torch.tensor([[0.9]], requires_grad=True)
    aia_loss(intensity, torch.tensor([0.1]), torch.tensor([0.05])).backward()
    assert intensity.grad.item() == pytest.approx(0.05)  # Huber: delta * sign(x) / (L * B)


def test_total_loss_weights_per_task_and_errors():
    ntp = torch.tensor(2.0)
    got = total_loss(ntp, {"und": torch.tensor(0.1), "gen": torch.tensor(0.2)}, {"und": 10.0, "gen": 5.0})
    assert got.item() == pytest.approx(2.0 + 1.0 + 1.0)
    with pytest.raises(KeyError, match="gen"):
        total_loss(ntp, {"gen": torch.tensor(0.2)}, {"und": 1.0})
    with pytest.raises(ValueError, match="mode"):
        aia_loss(torch.zeros(2, 1), torch.zeros(2), torch.ones(2), mode="l1")
    with pytest.raises(ValueError, match="targets for 2 layers"):
        aia_loss(torch.zeros(2, 1), torch.zeros(3), torch.ones(3))
