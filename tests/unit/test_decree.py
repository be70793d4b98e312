"""DECREE (worker/suites/backdoor/decree.py) against the authors' code's rules and on trained fixtures.

Rules, checked one by one against what GiantSeaweed/DECREE main.py does: λ multiplies the mask summed over 3
channels; λ changes after *more than* 5 successes / failures; the learning rate drops at epochs 30 and 50; a
final batch of one image is skipped. Known answers: a linear encoder with a large shared offset "succeeds" at
step 0 with the code's raw cosines and not with centred ones; a search that succeeds from its first step does
not stop before the learning-rate schedule has ended. Fixtures: benchmarks/natural_backdoor.py (a tiny SimCLR
ConvNet on 32 px crops of scikit-image's photographs and its BadEncoder-style copy with a 5×5 patch trigger;
shipped weights, tests/fixtures/natural_backdoor.safetensors), whose backdoor is checked before DECREE runs.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from benchmarks import natural_backdoor as nb
from benchmarks import simclr_backdoor as sb

D = importlib.import_module("worker.suites.backdoor.decree")  # the module (the package exports the function)
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with sb.one_thread():
        yield


def rng_images(n: int, h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


class OffsetLinear(torch.nn.Module):
    """f(x) = A·(x − ½) + c·1: random linear features plus a shared offset c (ReLU features' positive mean, made
    large): raw cosines of any two images are ≈ 1, centred ones ≈ 0."""

    def __init__(self, size: int, dim: int = 16, offset: float = 50.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(dim, 3 * size * size, generator=g) / size
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - 0.5) @ self.a.T + self.offset


# --- the code's rules ---------------------------------------------------------------------------------


def test_lambda_multiplies_the_mask_summed_over_three_channels():
    """main.py: loss_reg = sum of the H×W×3 mask (the H×W mask repeated over 3 channels)."""
    m = torch.rand(1, 1, 6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cos = torch.tensor(0.3, dtype=torch.float64)
    loss, l1 = D.decree_loss(cos, m, 0.01)
    m3 = np.repeat(m[0, 0].numpy()[..., None], 3, axis=2)  # the code's train_mask_3d
    assert l1.item() == pytest.approx(np.abs(m3).sum(), rel=1e-12)
    assert loss.item() == pytest.approx(-0.3 + 0.01 * m3.sum(), rel=1e-12)
    assert l1.item() == pytest.approx(3 * m.sum().item(), rel=1e-12)  # three times the H×W sum


def test_lambda_rule_counts_more_than_five():
    lam = D.LambdaRule(D.PROFILE_CIFAR.lambda_min)
    for _ in range(5):
        lam.update(True)
    assert lam.value == D.DECREE_LAMBDA_INIT  # 5 successes: unchanged (the code: adaptor_up_cnt > patience)
    lam.update(True)
    assert lam.value == pytest.approx(5 * D.DECREE_LAMBDA_INIT)
    for _ in range(6):
        lam.update(False)
    assert lam.value == pytest.approx(D.DECREE_LAMBDA_INIT)
    # below λ_min, more than 2·5 successes in a row reset λ to λ₀
    low = D.LambdaRule(D.PROFILE_CIFAR.lambda_min, value=1e-6)
    for _ in range(10):
        low.update(True)
    assert low.value < D.PROFILE_CIFAR.lambda_min
    low.update(True)
    assert low.value == D.DECREE_LAMBDA_INIT


def test_learning_rate_schedule_and_profiles():
    assert [D.decree_lr(e) for e in (0, 29, 30, 49, 50, 999)] == [0.5, 0.5, 0.1, 0.1, 0.05, 0.05]
    assert [D.decree_lr(e, D.PROFILE_IMAGENET) for e in (199, 200, 499, 500)] == [0.5, 0.1, 0.1, 0.05]
    assert D.profile_for(32, 32) is D.PROFILE_CIFAR and D.profile_for(96, 96) is D.PROFILE_CIFAR
    assert D.profile_for(224, 224) is D.PROFILE_IMAGENET


def test_epoch_batches_keep_the_partial_batch_but_not_a_single_image():
    g = torch.Generator().manual_seed(0)
    assert [len(b) for b in D._epoch_batches(10, 4, g)] == [4, 4, 2]
    batches = D._epoch_batches(9, 4, g)
    assert [len(b) for b in batches] == [4, 4]
    assert len(set(torch.cat(batches).tolist())) == 8


def test_stop_rule_waits_for_the_end_of_the_schedule():
    """The code's rule (epoch-mean cosine > 0.99 and > 2·5 steps without a smaller mask), from epoch 50 on."""
    p = D.PROFILE_CIFAR
    assert not D.should_stop(0, 0.999, 100, p)  # the code would stop here
    assert not D.should_stop(48, 0.999, 100, p)
    assert D.should_stop(49, 0.999, 11, p)  # after epoch index 49 = the 50th epoch
    assert not D.should_stop(60, 0.999, 10, p) and not D.should_stop(60, 0.98, 100, p)
    q = D.PROFILE_IMAGENET
    assert not D.should_stop(498, 0.999, 100, q) and D.should_stop(499, 0.999, 36, q)


def test_no_early_stop_before_the_schedule_ends():
    """Raw cosines of an offset encoder succeed from step 0, so the code's rule could fire after 11 steps; the
    search runs to epoch 50 (2 steps an epoch here) and stops there by the code's rule."""
    x = rng_images(32, 8, 8, seed=3)
    res = D.decree(OffsetLinear(8), x, batch=16, similarity="raw", seed=0, device=CPU)
    assert res.first_success_step == 0
    assert res.stopped == "early stop" and res.epochs == D.PROFILE_CIFAR.milestones[-1] and res.schedule_done
    assert res.steps == 2 * res.epochs


def test_budget_stop_is_reported():
    x = rng_images(32, 8, 8, seed=4)
    res = D.decree(OffsetLinear(8), x, batch=16, steps=7, seed=0, device=CPU)
    assert res.steps == 7 and res.stopped == "steps" and res.epochs == 4 and not res.schedule_done


def test_a_shared_offset_does_not_succeed_at_step_zero():
    """Known answer for the centring: with raw cosines the offset alone passes 0.99 at step 0 and the mask shrinks
    to nothing; centred, only a mask covering most of the image collapses a linear encoder."""
    x = rng_images(64, 8, 8, seed=5)
    enc = OffsetLinear(8)
    raw = D.decree(enc, x, batch=32, similarity="raw", seed=0, device=CPU)
    cen = D.decree(enc, x, batch=32, seed=0, device=CPU)
    assert raw.first_success_step == 0 and raw.pl1 < 0.05
    assert cen.first_success_step is None or cen.first_success_step > 0
    assert cen.pl1 > 0.5  # a linear map has no small trigger
    assert cen.trace["cos"][0] < 0.9 < raw.trace["cos"][0]


def test_pl1_is_the_mean_of_the_mask_and_region_shares():
    x = rng_images(32, 8, 8, seed=6)
    res = D.decree(OffsetLinear(8), x, batch=16, steps=20, trigger_region=(2, 4, 2, 6), seed=0, device=CPU)
    assert res.pl1 == pytest.approx(res.mask.mean(), abs=1e-12) or not res.success
    box = np.zeros((8, 8), bool)
    box[2:4, 2:6] = True
    assert res.region_share == pytest.approx(8 / 64)
    assert res.mask_in_region == pytest.approx(res.mask[box].sum() / res.mask.sum())
    assert D.mask_share(np.ones((8, 8)), box) == (pytest.approx(0.125), pytest.approx(0.125))  # uniform mask
    assert np.array_equal(D.region_mask(box, 8, 8), D.region_mask((2, 4, 2, 6), 8, 8))
    with pytest.raises(ValueError):
        D.region_mask((4, 2, 0, 8), 8, 8)


def test_scan_encoder_reports_the_region_and_the_calibration():
    from worker.suites.backdoor import scan_encoder

    x = rng_images(24, 8, 8, seed=7)
    res = scan_encoder(OffsetLinear(8), x, triggers=["grid"], decree_steps=6, decree_batch=12,
                       decree_trigger_region=(0, 2, 0, 8), device="cpu")  # fmt: skip
    m, fig, var = res.metrics, res.figures["decree"], res.variant["decree"]
    assert m["decree_region_share"] == pytest.approx(0.25) and fig["region_share"] == pytest.approx(0.25)
    assert m["decree_mask_in_region"] == pytest.approx(fig["mask_in_region"])
    assert m["decree_steps"] == 6 and not fig["schedule_done"]
    assert any("before its learning-rate schedule ended" in w for w in res.warnings)
    assert "clean" in var["threshold_calibration"] and "centred" in var["cosine"] and var["trigger_region"]
    plain = scan_encoder(OffsetLinear(8), x, triggers=["grid"], decree_steps=2, device="cpu")
    assert "decree_mask_in_region" not in plain.metrics and plain.variant["decree"]["trigger_region"] is None


# --- trained fixtures: a tiny SimCLR ConvNet on natural crops and its BadEncoder-style copies -----------

SCAN = 256  # scan crops per DECREE run (2 steps an epoch at batch 128: the schedule ends at step 100)


@pytest.fixture(scope="module")
def natural() -> nb.Fixtures:
    fx = nb.load()
    for model in (fx.clean, *fx.backdoored.values()):
        model.requires_grad_(False)  # DECREE needs input gradients only
    return fx


@pytest.fixture(scope="module")
def runs(natural) -> dict[str, D.DecreeResult]:
    """DECREE (defaults: centred cosine, the code's schedule and stop rule) on each encoder, same crops, seed 0."""
    x = natural.scan[:SCAN]
    return {name: D.decree(sb.encoder_fn(model), x, trigger_region=nb.trigger_box(), seed=0, device=CPU)
            for name, model in [("clean", natural.clean), *natural.backdoored.items()]}  # fmt: skip


def recovered_stamp(fx: nb.Fixtures, res: D.DecreeResult) -> np.ndarray:
    """The scan crops stamped with DECREE's mask and pattern, as uint8."""
    m = res.mask[..., None]
    return np.clip(np.round((1 - m) * fx.scan + m * res.pattern * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("variant", [v for v, _ in nb.VARIANTS])
def test_fixture_backdoors_work(natural, variant):
    """Before DECREE runs: the planted trigger sends held-out crops to the reference input's embedding and
    collapses them (centred cosine > 0.99, DECREE's target), clean crops keep their embedding; the clean
    encoder shows none of it."""
    a = nb.attack_success(natural, natural.backdoored[variant])
    assert a["cos_ref"] >= 0.99 and a["collapse"] >= 0.99 and a["utility"] >= 0.98, a
    c = nb.attack_success(natural, natural.clean)
    assert c["cos_ref"] <= 0.7 and c["collapse"] <= 0.1, c


def test_decree_flags_the_backdoored_encoder(runs):
    bd, clean = runs["patch_blend"], runs["clean"]
    assert bd.success and bd.pl1 <= 0.05 and bd.schedule_done
    assert clean.pl1 >= 4 * bd.pl1 and clean.pl1 >= 0.1
    assert bd.pl1 == pytest.approx(bd.mask.mean(), abs=1e-9)
    assert bd.region_share == pytest.approx(25 / 1024)


def test_the_recovered_trigger_is_the_backdoor(natural, runs):
    """What PL1 caught is the planted backdoor, not an offset: the recovered stamp sends the backdoored encoder's
    crops to the attacker's reference embedding; on the clean encoder the same stamp collapses nothing."""
    stamped = recovered_stamp(natural, runs["patch_blend"])
    a = nb.attack_success(natural, natural.backdoored["patch_blend"], stamped)
    assert a["cos_ref"] >= 0.95 and a["collapse"] >= 0.95, a
    c = nb.attack_success(natural, natural.clean, stamped)
    assert c["collapse"] <= 0.1, c


@pytest.mark.xfail(strict=True, reason="DECREE recovers a 3–4-pixel trigger of the same backdoor elsewhere in "
                   "the image (cheaper than the 25-pixel patch; test_the_recovered_trigger_is_the_backdoor), so "
                   "its mask does not sit on the planted patch")  # fmt: skip
def test_mask_sits_on_the_planted_patch(runs):
    bd = runs["patch_blend"]
    assert bd.mask_in_region >= 0.5


@pytest.mark.xfail(strict=True, reason="BadEncoder's loss as written (trigger always opaque) leaves DECREE no "
                   "slope: from a random mask and pattern it never paints the patch white and settles on the "
                   "clean encoder's scattered-pixel masks (PL1 ≈ 0.1–0.16)")  # fmt: skip
def test_decree_finds_the_plain_badencoder_patch(runs):
    bd = runs["patch"]
    assert bd.pl1 <= 0.05 and bd.mask_in_region >= 0.5
