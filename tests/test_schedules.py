"""Schedules: λ1/λ2 (Eq. 6–7), MultiStepLR per iteration, the automated LR scheduler (SPEC 4.4)."""

from __future__ import annotations

import json

import pytest

from autolora.errors import ConfigError
from autolora.schedules import AutoLR, lambda_weights, multistep_lr


def run_autolr(accuracies, scheduler=None):
    scheduler = scheduler or AutoLR()
    return scheduler, [scheduler.update(a) for a in accuracies]


def epochs_where(decisions, attribute):
    """1-based epoch numbers whose decision has ``attribute`` set."""
    return [i + 1 for i, d in enumerate(decisions) if getattr(d, attribute)]


# λ1 / λ2


@pytest.mark.parametrize(
    ("accuracy", "alpha", "expected"),
    [
        (0.0, 1.0, (1.0, 0.0)),
        (1.0, 1.0, (0.0, 6.0)),
        (0.5, 1.0, (0.5, 3.0)),
        (0.25, 0.5, (0.5, 3.0)),  # sqrt(0.25) = 0.5
        (0.5, 2.0, (0.75, 1.5)),  # 0.5**2 = 0.25
        (0.8, 3.0, (1 - 0.512, 6 * 0.512)),
    ],
)
def test_lambda_weights_values(accuracy, alpha, expected):
    lambda1, lambda2 = lambda_weights(accuracy, alpha=alpha)
    assert lambda1 == pytest.approx(expected[0])
    assert lambda2 == pytest.approx(expected[1])


def test_lambda_weights_scale():
    assert lambda_weights(0.5, scale=2.0) == pytest.approx((0.5, 1.0))


@pytest.mark.parametrize("accuracy", [-0.01, 1.01, 55.0, float("nan")])
def test_lambda_weights_rejects_non_fractions(accuracy):
    with pytest.raises(ValueError, match="fraction"):
        lambda_weights(accuracy)


def test_lambda_weights_rejects_non_positive_alpha():
    with pytest.raises(ConfigError, match="alpha"):
        lambda_weights(0.5, alpha=0.0)


# MultiStepLR


def test_multistep_lr_hand_values():
    ipe = 10
    assert multistep_lr(0.1, 0, ipe) == pytest.approx(0.1)
    assert multistep_lr(0.1, 299, ipe) == pytest.approx(0.1)
    assert multistep_lr(0.1, 300, ipe) == pytest.approx(0.01)
    assert multistep_lr(0.1, 499, ipe) == pytest.approx(0.01)
    assert multistep_lr(0.1, 500, ipe) == pytest.approx(0.001)
    assert multistep_lr(0.1, 10_000, ipe) == pytest.approx(0.001)


def test_multistep_lr_equals_torch_multisteplr_stepped_per_iteration():
    torch = pytest.importorskip("torch")
    ipe, milestones, base = 3, (2, 4), 0.05
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=base, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[m * ipe for m in milestones], gamma=0.1
    )
    for iteration in range(6 * ipe):
        torch_lr = optimizer.param_groups[0]["lr"]
        ours = multistep_lr(base, iteration, ipe, milestones=milestones, factor=0.1)
        assert ours == pytest.approx(torch_lr, rel=1e-12), iteration
        optimizer.step()
        scheduler.step()


# AutoLR


def test_autolr_neither_condition_keeps_lr():
    _, decisions = run_autolr([10, 11, 12, 13, 14, 15, 16, 17, 18])
    assert [d.lr for d in decisions] == [0.01] * 9
    assert epochs_where(decisions, "reload_best") == []
    assert epochs_where(decisions, "is_best") == list(range(1, 10))
    assert epochs_where(decisions, "stop") == []


def test_autolr_exactly_rho_increases_is_not_condition1():
    # window [0, 4]: 11>10, 12>11, 11<12, 12>11 -> 3 increases = 0.75*4, not fewer
    _, decisions = run_autolr([10, 11, 12, 11, 12])
    assert decisions[-1].lr == 0.01
    assert not decisions[-1].reload_best


def test_autolr_condition1_halves_and_reloads_at_epoch_5():
    # window [0, 4]: 2 increases < 3
    _, decisions = run_autolr([10, 11, 10, 11, 10, 9])
    assert [d.lr for d in decisions[:4]] == [0.01] * 4
    assert decisions[4].lr == pytest.approx(0.005)
    assert epochs_where(decisions, "reload_best") == [5]
    assert "rose in only 2 of 4" in decisions[4].reason
    assert decisions[5].lr == pytest.approx(0.005)
    assert epochs_where(decisions, "is_best") == [1, 2]


def test_autolr_condition2_alone_at_second_checkpoint():
    # epochs 1-5 rise (no decay at 5, best 50); epochs 6-9 rise 3 times in window [4, 8]
    # (50 -> 1 -> 2 -> 3 -> 4) so condition 1 is false, but the best (50) did not improve.
    accuracies = [10, 20, 30, 40, 50, 1, 2, 3, 4]
    _, decisions = run_autolr(accuracies)
    assert epochs_where(decisions, "reload_best") == [9]
    assert decisions[7].lr == 0.01
    assert decisions[8].lr == pytest.approx(0.005)
    assert "best accuracy did not improve" in decisions[8].reason
    assert "rose in only" not in decisions[8].reason


def test_autolr_halving_at_checkpoint_k_does_not_block_condition2_at_k_plus_1():
    # condition 1 fires at epoch 5 (one rise in [0, 4]); at epoch 9 the window [4, 8] rises 4 times
    # (condition 1 false) and the best (50, epoch 1) did not improve: condition 2 halves again,
    # although the LR was halved at the previous checkpoint (SPEC 4.4, released code).
    accuracies = [50, 10, 5, 20, 1, 2, 3, 4, 5]
    _, decisions = run_autolr(accuracies)
    assert epochs_where(decisions, "reload_best") == [5, 9]
    assert decisions[4].lr == pytest.approx(0.005)
    assert decisions[-1].lr == pytest.approx(0.0025)
    assert "best accuracy did not improve" in decisions[-1].reason
    assert "rose in only" not in decisions[-1].reason


def test_autolr_worked_example_of_spec_4_4_halves_at_21_then_25():
    """W = [0, 4, 8, ...]: condition 1 halves at epoch 21; epochs 22-25 bring no new best and the
    window [20, 24] rises three times (condition 1 false): condition 2 halves again at epoch 25."""
    accuracies = [float(a) for a in range(10, 26)]  # epochs 1-16: rising, a new best every epoch
    accuracies += [26, 25, 24, 30, 29]  # epochs 17-21: window [16, 20] rises once; best 30
    accuracies += [25, 26, 27, 28]  # epochs 22-25: window [20, 24] rises 3 times; no new best
    _, decisions = run_autolr(accuracies)
    assert epochs_where(decisions, "reload_best") == [21, 25]
    assert "rose in only 1 of 4" in decisions[20].reason
    assert "rose in only" not in decisions[24].reason
    assert "best accuracy did not improve" in decisions[24].reason
    assert decisions[24].lr == pytest.approx(0.01 / 4)
    assert max(accuracies[21:25]) < max(accuracies[:21])


def test_autolr_condition2_cannot_fire_at_first_checkpoint():
    # best at epoch 1 never improved, but window [0, 4] has 3 increases: no decay at epoch 5
    _, decisions = run_autolr([50, 10, 20, 30, 40])
    assert decisions[-1].lr == 0.01
    assert not decisions[-1].reload_best


def test_autolr_condition2_fires_when_best_improved_only_before_window():
    # as the cond2 test but with a new best inside the second window: no decay
    _, decisions = run_autolr([10, 20, 30, 40, 50, 1, 2, 3, 51])
    assert epochs_where(decisions, "reload_best") == []


def test_autolr_stops_below_min_lr_after_ten_halvings():
    # constant accuracy: no increases, condition 1 fires at every checkpoint e = 5, 9, ..., 41;
    # 0.01 / 2**10 < 1e-5 < 0.01 / 2**9
    _, decisions = run_autolr([30.0] * 41)
    assert epochs_where(decisions, "reload_best") == list(range(5, 42, 4))
    assert epochs_where(decisions, "stop") == [41]
    assert decisions[36].lr == pytest.approx(0.01 / 2**9)
    assert decisions[40].lr == pytest.approx(0.01 / 2**10)
    assert "below the minimum" in decisions[40].reason


def test_autolr_stops_at_max_epochs():
    accuracies = [float(i) for i in range(60)]
    _, decisions = run_autolr(accuracies)
    assert epochs_where(decisions, "stop") == [60]
    assert epochs_where(decisions, "reload_best") == []
    assert "maximum of 60 epochs" in decisions[-1].reason
    _, short = run_autolr([1.0, 2.0, 3.0], AutoLR(max_epochs=3))
    assert epochs_where(short, "stop") == [3]


def test_autolr_custom_checkpoints():
    # checkpoints [0, 2, 5]: checks after epochs 3 (window [0, 2]) and 6 (window [2, 5])
    scheduler = AutoLR(checkpoints=(0, 2, 5), rho=0.75)
    _, decisions = run_autolr([1, 2, 3, 2, 1, 0], scheduler)
    # window [0,2]: 2 of 2 rise -> keep; window [2,5]: 0 of 3 rise -> halve
    assert epochs_where(decisions, "reload_best") == [6]


def test_autolr_state_round_trip_mid_sequence():
    accuracies = [10, 20, 30, 40, 50, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 2, 1, 0]
    _, straight = run_autolr(accuracies)
    first, _ = run_autolr(accuracies[:7])
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    resumed = AutoLR()
    resumed.load_state_dict(state)
    continued = [resumed.update(a) for a in accuracies[7:]]
    assert continued == straight[7:]
    assert resumed.state_dict() == run_autolr(accuracies)[0].state_dict()


def test_autolr_state_without_the_old_lr_flag_and_an_old_state_with_it_resume_alike():
    accuracies = [50, 10, 5, 20, 1, 2, 3, 4, 5, 1, 1, 1, 1]
    _, straight = run_autolr(accuracies)
    first, _ = run_autolr(accuracies[:6])
    state = first.state_dict()
    assert "decayed_at_last_check" not in state
    old = {**state, "decayed_at_last_check": True}  # written before issue 11; no longer read
    resumed = AutoLR()
    resumed.load_state_dict(old)
    assert [resumed.update(a) for a in accuracies[6:]] == straight[6:]


def test_autolr_state_with_other_settings_is_refused():
    scheduler, _ = run_autolr([1.0, 2.0])
    with pytest.raises(ConfigError, match="autolr"):
        AutoLR(rho=0.5).load_state_dict(scheduler.state_dict())


@pytest.mark.parametrize(
    "kwargs",
    [{"checkpoints": (0,)}, {"checkpoints": (0, 4, 4)}, {"rho": 0}, {"decay": 1.5}],
)
def test_autolr_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        AutoLR(**kwargs)


def spec_autolr(accuracies, checkpoints=tuple(range(0, 57, 4)), rho=0.75, lr0=0.01):
    """SPEC 4.4 read independently: per finished epoch e (1-based), the LR of the next epoch,
    whether to reload, whether to stop."""
    lr, k, best = lr0, 1, float("-inf")
    best_after, out = {}, []
    for e, accuracy in enumerate(accuracies, start=1):
        best = max(best, accuracy)
        best_after[e] = best
        reload = False
        if k < len(checkpoints) and e - 1 == checkpoints[k]:
            a, b = checkpoints[k - 1], checkpoints[k]
            rises = sum(accuracies[j + 1] > accuracies[j] for j in range(a, b))
            condition1 = rises < rho * (b - a)
            # "the best after epoch b+1 equals the best after epoch a+1", never at k = 1; the LR
            # history plays no part
            condition2 = k > 1 and best_after[b + 1] == best_after[a + 1]
            if condition1 or condition2:
                lr, reload = lr / 2, True
            k += 1
        out.append((lr, reload, lr < 1e-5 or e >= 60))
    return out


def noisy_plateau(seed: int) -> list[float]:
    """A noisy plateau with ties: both conditions fire now and then."""
    import random

    rng = random.Random(seed)
    return [float(rng.choice(range(40, 46))) for _ in range(60)]


def test_the_noisy_plateaus_halve_by_condition2_right_after_a_halving():
    """The sequences below exercise the rule that changed (issue 11): condition 2 alone halving at
    the checkpoint after a halving, which the old reading (LR unchanged required) never did."""
    checkpoints, cases = tuple(range(0, 57, 4)), 0
    for seed in range(40):
        accuracies = noisy_plateau(seed)
        expected = spec_autolr(accuracies)
        reloads = [reload for _, reload, _ in expected]
        stop_at = next(i for i, (_, _, stop) in enumerate(expected) if stop) + 1
        for k in range(2, len(checkpoints)):
            a, b = checkpoints[k - 1], checkpoints[k]
            if b + 1 > stop_at or not (reloads[a] and reloads[b]):
                continue
            rises = sum(accuracies[j + 1] > accuracies[j] for j in range(a, b))
            cases += rises >= 0.75 * (b - a)  # condition 1 false: condition 2 alone
    assert cases >= 3


@pytest.mark.parametrize("seed", range(40))
def test_autolr_matches_an_independent_reading_of_spec_4_4(seed):
    accuracies = noisy_plateau(seed)
    _, decisions = run_autolr(accuracies)
    expected = spec_autolr(accuracies)
    stop_at = next(i for i, (_, _, stop) in enumerate(expected) if stop) + 1
    got = [(d.lr, d.reload_best, d.stop) for d in decisions[:stop_at]]
    assert got == expected[:stop_at]


def test_autolr_reference_sequence_exact_epochs():
    """A hand-checked 60-epoch run: rising to a plateau, then flat."""
    accuracies = [10.0, 12, 14, 16, 18, 20, 22, 24, 26] + [26.0] * 40
    _, decisions = run_autolr(accuracies)  # 49 epochs: the loop stops at the first `stop`
    # windows [0,4], [4,8] rise 4/4 -> keep; [8,12] has 0 rises -> cond1 at epoch 13, and again
    # at every later checkpoint 17, 21, ..., 57 (12 halvings; 0.01/2**10 < 1e-5 stops at 49)
    assert epochs_where(decisions, "reload_best") == list(range(13, 50, 4))
    assert epochs_where(decisions, "stop") == [49]
    assert decisions[48].lr == pytest.approx(0.01 / 2**10)
    assert epochs_where(decisions, "is_best") == list(range(1, 10))
