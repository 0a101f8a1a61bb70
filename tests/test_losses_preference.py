"""Formula tests of the paired preference losses (`trl.losses.preference`, `odds_ratio`, `sequence`).

Expected values are recomputed in plain Python (`math`) from each paper's formula, never with the implementation.
"""

import math

import pytest
import torch

from trl.losses import (
    F_DIVERGENCE_LOSS_TYPES,
    PREFERENCE_LOSSES,
    alphapo_reward,
    combine_losses,
    f_divergence_scores,
    ipo_loss,
    ld_dpo_logps,
    log1mexp,
    odds_ratio_loss,
    preference_loss,
    preference_loss_options,
    sequence_logps,
    sft_loss,
    sigmoid_loss,
    simpo_loss,
    wpo_pair_weights,
    wpo_sequence_weights,
)


LN2 = math.log(2)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return math.exp(logsig(x))


def t(values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# GOLDEN.md hand-derived DPO example (beta = 0.1).
POLICY_C = [-0.5, -10.0, -1.0]
POLICY_R = [-0.1, -30.0, -21.0]
REF_C = [-0.5, -10.1, -0.1]
REF_R = [-0.1, -20.1, -0.1]
R_C = [p - q for p, q in zip(POLICY_C, REF_C)]  # [0, 0.1, -0.9]
R_R = [p - q for p, q in zip(POLICY_R, REF_R)]  # [0, -9.9, -20.9]
BETA = 0.1


# --------------------------------------------------------------------------------------------- GOLDEN values


def test_golden_dpo_sigmoid_cdpo_and_hinge():
    """Log-ratio logits Δ = [0, 10, 20], scaled βΔ = [0, 1, 2]; −logσ gives [ln 2, 0.313262, 0.126928]."""
    args = (t(POLICY_C, torch.float32), t(POLICY_R, torch.float32), t(REF_C, torch.float32), t(REF_R, torch.float32))
    out = sigmoid_loss(*args, beta=BETA)
    torch.testing.assert_close(out.losses, torch.tensor([0.693147, 0.313262, 0.126928]), atol=1e-6, rtol=0)
    smoothed = sigmoid_loss(*args, beta=BETA, label_smoothing=0.1)
    torch.testing.assert_close(smoothed.losses, torch.tensor([0.693147, 0.413262, 0.326928]), atol=1e-6, rtol=0)
    hinge = preference_loss("hinge", *args, beta=BETA)
    torch.testing.assert_close(hinge.losses, torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    # Implicit rewards β·r: chosen [0, 0.01, -0.09], rejected [0, -0.99, -2.09].
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.0, 0.01, -0.09]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([0.0, -0.99, -2.09]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.margins, torch.tensor([0.0, 1.0, 2.0]), atol=1e-6, rtol=0)
    assert out.accuracies.tolist() == [0.0, 1.0, 1.0]


# Closed forms at policy == reference (all log-ratios 0), beta = 0.25 unless noted.
def _closed_form_at_init(loss_type: str, beta: float, chosen_logps: list[float]) -> list[float]:
    n = len(chosen_logps)
    eps = 1e-3  # exo_pair replaces label_smoothing=0 by 1e-3
    value = {
        "sigmoid": LN2,
        "sigmoid_norm": LN2,
        "hinge": 1.0,
        "ipo": (0 - 1 / (2 * beta)) ** 2,
        "exo_pair": 0.5 * (-LN2 - math.log(1 - eps)) + 0.5 * (-LN2 - math.log(eps)),
        "nca_pair": -math.log(0.5) - 0.5 * math.log(0.5) - 0.5 * math.log(0.5),
        "robust": LN2,
        "bco_pair": 2 * LN2,
        "sppo_hard": 2 * (1 / (2 * beta)) ** 2,
        "aot": LN2,
        "aot_pair": LN2,
        "aot_unpaired": LN2,
        "apo_zero": 1.0,
        "apo_down": 1.0,
        "discopop": 0.5 * LN2 + 0.5 * 1.0,
    }
    if loss_type == "sft":
        return [-x for x in chosen_logps]
    return [value[loss_type]] * n


PAIRED_WITH_REFERENCE = [name for name in PREFERENCE_LOSSES if name != "simpo"]


def _extra_options(loss_type: str, n: int) -> dict:
    if loss_type == "sigmoid_norm":
        return {"chosen_lengths": torch.arange(1, n + 1), "rejected_lengths": torch.arange(2, n + 2)}
    return {}


@pytest.mark.parametrize("loss_type", PAIRED_WITH_REFERENCE)
@pytest.mark.parametrize("beta", [0.25, 2.0])
def test_closed_form_at_initialisation(loss_type, beta):
    generator = torch.Generator().manual_seed(0)
    chosen = -torch.rand(6, generator=generator, dtype=torch.float64) * 20
    rejected = -torch.rand(6, generator=generator, dtype=torch.float64) * 20
    out = preference_loss(
        loss_type, chosen, rejected, chosen.clone(), rejected.clone(), beta=beta, **_extra_options(loss_type, 6)
    )
    expected = _closed_form_at_init(loss_type, beta, chosen.tolist())
    torch.testing.assert_close(out.losses, t(expected), atol=1e-10, rtol=1e-10)
    assert out.chosen_rewards.abs().max() == 0 and out.rejected_rewards.abs().max() == 0
    assert out.margins.abs().max() == 0


@pytest.mark.parametrize("loss_type", sorted(F_DIVERGENCE_LOSS_TYPES))
@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"])
def test_f_divergences_keep_the_closed_form_at_initialisation(loss_type, divergence):
    """Every f-divergence score is the same function of both log-ratios, so Δ = 0 when both are 0."""
    chosen, rejected = t([-3.0, -7.5]), t([-1.0, -12.0])
    out = preference_loss(
        loss_type,
        chosen,
        rejected,
        chosen.clone(),
        rejected.clone(),
        beta=0.25,
        f_divergence_type=divergence,
        f_alpha_divergence_coef=0.3,
        **_extra_options(loss_type, 2),
    )
    torch.testing.assert_close(out.losses, t(_closed_form_at_init(loss_type, 0.25, chosen.tolist())))


# -------------------------------------------------------------------- each loss on the GOLDEN log-probs


def _hand(loss_type: str, beta: float) -> list[float]:
    """Each paper's formula on R_C, R_R (log-ratios) and the raw log-probs, in plain Python."""
    out = []
    for i, (rc, rr) in enumerate(zip(R_C, R_R)):
        z = beta * (rc - rr)
        if loss_type == "sigmoid":
            out.append(-logsig(z))
        elif loss_type == "hinge":
            out.append(max(0.0, 1 - z))
        elif loss_type == "exo_pair":
            eps = 1e-3
            out.append(sig(z) * (logsig(z) - math.log(1 - eps)) + sig(-z) * (logsig(-z) - math.log(eps)))
        elif loss_type == "nca_pair":
            out.append(-logsig(beta * rc) - 0.5 * logsig(-beta * rc) - 0.5 * logsig(-beta * rr))
        elif loss_type == "robust":
            out.append(-logsig(z))  # ε = 0
        elif loss_type == "bco_pair":
            out.append(-logsig(beta * rc) - logsig(-beta * rr))  # δ = 0
        elif loss_type == "sppo_hard":
            out.append((rc - 1 / (2 * beta)) ** 2 + (rr + 1 / (2 * beta)) ** 2)
        elif loss_type == "apo_zero":
            out.append((1 - sig(beta * rc)) + sig(beta * rr))
        elif loss_type == "apo_down":
            out.append(sig(beta * rc) + (1 - sig(beta * (rc - rr))))
        elif loss_type == "discopop":
            tau = 0.05
            out.append((1 - sig(z / tau)) * -logsig(z) + sig(z / tau) * math.exp(-z))
        elif loss_type == "sft":
            out.append(-POLICY_C[i])
        elif loss_type == "ipo":
            out.append((rc - rr - 1 / (2 * beta)) ** 2)  # log-probs taken as already length-normalised
    if loss_type in ("aot", "aot_pair", "aot_unpaired"):
        if loss_type == "aot":
            policy = sorted(c - r for c, r in zip(POLICY_C, POLICY_R))
            ref = sorted(c - r for c, r in zip(REF_C, REF_R))
        else:
            policy, ref = sorted(R_C), sorted(R_R)
        out = [-logsig(beta * (p - q)) for p, q in zip(policy, ref)]
    return out


@pytest.mark.parametrize("loss_type", [name for name in PAIRED_WITH_REFERENCE if name != "sigmoid_norm"])
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_each_loss_matches_its_formula(loss_type, beta):
    out = preference_loss(loss_type, t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=beta)
    torch.testing.assert_close(out.losses, t(_hand(loss_type, beta)), atol=1e-10, rtol=1e-10)


def test_aot_sorting_by_hand():
    """aot: policy margins [-0.4, 20, 20] sorted, ref margins [-0.4, 10, 0] sorted [-0.4, 0, 10] → d = [0, 20, 10]."""
    out = preference_loss("aot", t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=0.1)
    torch.testing.assert_close(out.losses, t([LN2, -logsig(2.0), -logsig(1.0)]))
    # aot_pair: r_c sorted [-0.9, 0, 0.1], r_r sorted [-20.9, -9.9, 0] → d = [20, 9.9, 0.1].
    pair = preference_loss("aot_pair", t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=0.1)
    torch.testing.assert_close(pair.losses, t([-logsig(2.0), -logsig(0.99), -logsig(0.01)]))


def test_sigmoid_norm_divides_by_completion_lengths():
    lengths_c, lengths_r = [2, 5, 4], [1, 3, 10]
    out = preference_loss(
        "sigmoid_norm",
        t(POLICY_C),
        t(POLICY_R),
        t(REF_C),
        t(REF_R),
        beta=0.5,
        chosen_lengths=torch.tensor(lengths_c),
        rejected_lengths=torch.tensor(lengths_r),
    )
    expected = [-logsig(0.5 * (rc / lc - rr / lr)) for rc, rr, lc, lr in zip(R_C, R_R, lengths_c, lengths_r)]
    torch.testing.assert_close(out.losses, t(expected))
    with pytest.raises(ValueError, match="needs chosen_lengths and rejected_lengths"):
        preference_loss("sigmoid_norm", t(POLICY_C), t(POLICY_R), beta=0.5)


def test_ipo_with_lengths_equals_ipo_on_mean_logps():
    lengths_c, lengths_r = t([2.0, 5.0, 4.0]), t([1.0, 3.0, 10.0])
    summed = ipo_loss(
        t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=0.1, chosen_lengths=lengths_c, rejected_lengths=lengths_r
    )
    means = ipo_loss(
        t(POLICY_C) / lengths_c, t(POLICY_R) / lengths_r, t(REF_C) / lengths_c, t(REF_R) / lengths_r, beta=0.1
    )
    expected = [(rc / lc - rr / lr - 5.0) ** 2 for rc, rr, lc, lr in zip(R_C, R_R, [2, 5, 4], [1, 3, 10])]
    torch.testing.assert_close(summed.losses, t(expected))
    torch.testing.assert_close(means.losses, t(expected))
    with pytest.raises(ValueError, match="both chosen_lengths and rejected_lengths"):
        ipo_loss(t(POLICY_C), t(POLICY_R), beta=0.1, chosen_lengths=lengths_c)


# -------------------------------------------------------------------------------------- options and edge cases


@pytest.mark.parametrize("epsilon", [0.0, 0.5])
def test_label_smoothing_zero_and_half(epsilon):
    out = sigmoid_loss(t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=BETA, label_smoothing=epsilon)
    z = [BETA * (rc - rr) for rc, rr in zip(R_C, R_R)]
    expected = [-(1 - epsilon) * logsig(v) - epsilon * logsig(-v) for v in z]
    torch.testing.assert_close(out.losses, t(expected))
    if epsilon == 0.5:  # a coin-flip label: the loss no longer depends on which completion is "chosen"
        swapped = sigmoid_loss(t(POLICY_R), t(POLICY_C), t(REF_R), t(REF_C), beta=BETA, label_smoothing=epsilon)
        torch.testing.assert_close(swapped.losses, out.losses)


def test_robust_and_exo_label_smoothing():
    eps = 0.2
    robust = preference_loss("robust", t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=BETA, label_smoothing=eps)
    z = [BETA * (rc - rr) for rc, rr in zip(R_C, R_R)]
    expected = [(-(1 - eps) * logsig(v) + eps * logsig(-v)) / (1 - 2 * eps) for v in z]
    torch.testing.assert_close(robust.losses, t(expected))
    exo = preference_loss("exo_pair", t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=BETA, label_smoothing=eps)
    expected = [sig(v) * (logsig(v) - math.log(1 - eps)) + sig(-v) * (logsig(-v) - math.log(eps)) for v in z]
    torch.testing.assert_close(exo.losses, t(expected))


def test_label_smoothing_out_of_range_raises():
    args = (t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R))
    with pytest.raises(ValueError, match="label_smoothing"):
        sigmoid_loss(*args, beta=BETA, label_smoothing=0.6)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss("robust", *args, beta=BETA, label_smoothing=0.5)


def test_bco_pair_reward_shift_and_returned_mean():
    delta = 0.3
    out = preference_loss(
        "bco_pair", t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=BETA, reward_shift=torch.tensor(delta)
    )
    expected = [-logsig(BETA * rc - delta) - logsig(-(BETA * rr - delta)) for rc, rr in zip(R_C, R_R)]
    torch.testing.assert_close(out.losses, t(expected))
    # Mean of β·[0, 0.1, -0.9, 0, -9.9, -20.9] = β·(-31.6)/6.
    assert out.reward_mean.item() == pytest.approx(BETA * -31.6 / 6)
    assert not out.reward_mean.requires_grad
    at_init = preference_loss("bco_pair", t([-2.0]), t([-3.0]), t([-2.0]), t([-3.0]), beta=BETA, reward_shift=delta)
    assert at_init.losses.item() == pytest.approx(-logsig(-delta) - logsig(delta))


def test_discopop_tau():
    out = preference_loss("discopop", t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=BETA, discopop_tau=0.5)
    z = [BETA * (rc - rr) for rc, rr in zip(R_C, R_R)]
    expected = [(1 - sig(v / 0.5)) * -logsig(v) + sig(v / 0.5) * math.exp(-v) for v in z]
    torch.testing.assert_close(out.losses, t(expected))


@pytest.mark.parametrize("beta", [1e-6, 1e3])
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_beta_extremes(loss_type, beta):
    out = preference_loss(loss_type, t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=beta)
    z = [beta * d for d in (0.0, 10.0, 20.0)]
    expected = {
        "sigmoid": [-logsig(v) for v in z],
        "hinge": [max(0.0, 1 - v) for v in z],
        "ipo": [(d - 1 / (2 * beta)) ** 2 for d in (0.0, 10.0, 20.0)],
    }[loss_type]
    torch.testing.assert_close(out.losses, t(expected), rtol=1e-9, atol=1e-9)
    assert torch.isfinite(out.losses).all()


def test_equal_chosen_and_rejected_logps_give_zero_margin():
    policy, ref = t([-4.0, -9.0]), t([-5.0, -2.0])
    out = sigmoid_loss(policy, policy.clone(), ref, ref.clone(), beta=0.3)
    torch.testing.assert_close(out.losses, t([LN2, LN2]))
    assert out.margins.abs().max() == 0
    assert out.chosen_rewards.tolist() == pytest.approx([0.3, -2.1])


@pytest.mark.parametrize("loss_type", PAIRED_WITH_REFERENCE)
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_margins_stay_finite(loss_type, sign, dtype):
    chosen = torch.tensor([-1.0, -2.0], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([-1.0, -2.0], dtype=dtype) - sign * 1e4
    rejected.requires_grad_(True)
    ref = torch.tensor([-1.0, -2.0], dtype=dtype)
    divergences = ["reverse_kl"] + (
        ["forward_kl", "js_divergence", "alpha_divergence"] * (loss_type in F_DIVERGENCE_LOSS_TYPES)
    )
    for divergence in divergences:
        options = {"f_divergence_type": divergence, **_extra_options(loss_type, 2)}
        out = preference_loss(loss_type, chosen, rejected, ref, ref.clone(), beta=0.5, **options)
        assert torch.isfinite(out.losses).all(), (loss_type, divergence, out.losses)
        chosen.grad = rejected.grad = None
        out.losses.sum().backward()
        grads = [g for g in (chosen.grad, rejected.grad) if g is not None]  # sft has no rejected gradient
        assert grads and all(torch.isfinite(g).all() for g in grads), (loss_type, divergence)


@pytest.mark.parametrize("loss_type", PAIRED_WITH_REFERENCE)
def test_gradients_flow_to_the_policy_and_metrics_are_detached(loss_type):
    chosen, rejected = t([-2.0, -3.0], grad=True), t([-2.5, -1.0], grad=True)
    ref_c, ref_r = t([-2.2, -2.0]), t([-2.0, -1.5])
    out = preference_loss(loss_type, chosen, rejected, ref_c, ref_r, beta=0.5, **_extra_options(loss_type, 2))
    for metric in (out.chosen_rewards, out.rejected_rewards, out.margins):
        assert not metric.requires_grad and metric.grad_fn is None
    out.losses.sum().backward()
    assert chosen.grad is not None and chosen.grad.abs().sum() > 0
    if loss_type == "sft":
        assert chosen.grad.tolist() == [-1.0, -1.0]
        assert rejected.grad is None
    else:
        assert rejected.grad is not None and rejected.grad.abs().sum() > 0


def test_reference_free_equals_zero_reference():
    zeros = torch.zeros(3, dtype=torch.float64)
    for loss_type in ("sigmoid", "hinge", "nca_pair", "apo_zero", "aot"):
        free = preference_loss(loss_type, t(POLICY_C), t(POLICY_R), beta=BETA)
        zero_ref = preference_loss(loss_type, t(POLICY_C), t(POLICY_R), zeros, zeros.clone(), beta=BETA)
        torch.testing.assert_close(free.losses, zero_ref.losses)
        torch.testing.assert_close(free.chosen_rewards, t([BETA * x for x in POLICY_C]))
    with pytest.raises(ValueError, match="both ref_chosen_logps and ref_rejected_logps"):
        sigmoid_loss(t(POLICY_C), t(POLICY_R), t(REF_C), None, beta=BETA)


def test_sft_rewards_are_zero():
    out = sft_loss(t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=BETA)
    assert out.losses.tolist() == [0.5, 10.0, 1.0]
    assert out.chosen_rewards.tolist() == [0.0, 0.0, 0.0] and out.rejected_rewards.tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------- f-divergences


def test_f_divergence_scores_by_hand():
    r = [-2.0, -0.5, 0.0, 1.5]
    alpha = 0.3
    expected = {
        "reverse_kl": r,
        "forward_kl": [1 - math.exp(-x) for x in r],
        "js_divergence": [math.log(2 * math.exp(x) / (1 + math.exp(x))) for x in r],
        "alpha_divergence": [(math.exp((alpha - 1) * x) - 1) / (alpha - 1) for x in r],
    }
    for divergence, values in expected.items():
        torch.testing.assert_close(f_divergence_scores(t(r), divergence, alpha), t(values))
    # α → 1 is reverse KL; α = 0 is forward KL.
    torch.testing.assert_close(f_divergence_scores(t(r), "alpha_divergence", 1.0), t(r))
    torch.testing.assert_close(f_divergence_scores(t(r), "alpha_divergence", 0.0), t(expected["forward_kl"]))

    class FDivergenceType:  # the v0.24 enum is accepted through its `value`
        value = "js_divergence"

    torch.testing.assert_close(f_divergence_scores(t(r), FDivergenceType()), t(expected["js_divergence"]))
    with pytest.raises(ValueError, match="reverse_kl"):
        f_divergence_scores(t(r), "tv_distance")


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_sigmoid_under_f_divergence_by_hand(divergence):
    alpha = 0.5

    def h(x: float) -> float:
        if divergence == "forward_kl":
            return 1 - math.exp(-x)
        if divergence == "js_divergence":
            return LN2 + logsig(x)
        return (math.exp((alpha - 1) * x) - 1) / (alpha - 1)

    out = preference_loss(
        "sigmoid",
        t(POLICY_C),
        t(POLICY_R),
        t(REF_C),
        t(REF_R),
        beta=BETA,
        f_divergence_type=divergence,
        f_alpha_divergence_coef=alpha,
    )
    expected = [-logsig(BETA * (h(rc) - h(rr))) for rc, rr in zip(R_C, R_R)]
    torch.testing.assert_close(out.losses, t(expected))
    # Rewards stay β·(log π − log π_ref) whatever the divergence.
    torch.testing.assert_close(out.chosen_rewards, t([BETA * x for x in R_C]))


# ---------------------------------------------------------------------------------------------- dispatch


def test_dispatch_error_lists_valid_names():
    with pytest.raises(ValueError, match="Valid loss types") as info:
        preference_loss("sigmoidd", t(POLICY_C), t(POLICY_R), beta=BETA)
    for name in ("sigmoid", "hinge", "ipo", "apo_zero", "discopop", "sft"):
        assert repr(name) in str(info.value)


def test_dispatch_option_validation_and_filtering():
    args = (t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R))
    with pytest.raises(ValueError, match="Unknown preference-loss options"):
        preference_loss("sigmoid", *args, beta=BETA, label_smothing=0.1)
    with pytest.raises(ValueError, match="no f-divergence form"):
        preference_loss("nca_pair", *args, beta=BETA, f_divergence_type="js_divergence")
    # One set of options for several loss types: each takes what it uses.
    options = {"label_smoothing": 0.1, "discopop_tau": 0.05, "reward_shift": 0.0}
    hinge = preference_loss("hinge", *args, beta=BETA, **options)
    assert hinge.losses.tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert "label_smoothing" not in preference_loss_options("hinge")
    assert preference_loss_options("sigmoid") == {"label_smoothing", "f_divergence_type", "f_alpha_divergence_coef"}
    with pytest.raises(ValueError, match="beta must be > 0"):
        preference_loss("sigmoid", *args, beta=0.0)
    with pytest.raises(ValueError, match="same shape"):
        sigmoid_loss(t([-1.0, -2.0]), t([-1.0]), beta=BETA)


def test_combine_losses_is_the_weighted_sum_of_means():
    losses = {"sigmoid": t([1.0, 3.0]), "bco_pair": t([2.0, 2.0, 5.0]), "sft": t(4.0)}
    combined = combine_losses(losses, [0.8, 0.2, 1.0])
    assert combined.item() == pytest.approx(0.8 * 2.0 + 0.2 * 3.0 + 1.0 * 4.0)
    assert combine_losses(losses).item() == pytest.approx(2.0 + 3.0 + 4.0)
    assert combine_losses(losses, {"sft": 0.5, "sigmoid": 1.0, "bco_pair": 0.0}).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="one weight per loss type"):
        combine_losses(losses, [1.0, 2.0])


# ------------------------------------------------------------------------------------------ SimPO / AlphaPO


def test_simpo_by_hand():
    chosen_mean, rejected_mean = [-0.8, -1.5, -0.2], [-1.2, -0.9, -3.0]
    beta, gamma = 2.0, 0.5
    out = simpo_loss(t(chosen_mean), t(rejected_mean), beta=beta, simpo_gamma=gamma)
    expected = [-logsig(beta * (c - r) - gamma) for c, r in zip(chosen_mean, rejected_mean)]
    torch.testing.assert_close(out.losses, t(expected))
    torch.testing.assert_close(out.chosen_rewards, t([beta * c for c in chosen_mean]))
    eps = 0.1
    smoothed = simpo_loss(t(chosen_mean), t(rejected_mean), beta=beta, simpo_gamma=gamma, label_smoothing=eps)
    z = [beta * (c - r) - gamma for c, r in zip(chosen_mean, rejected_mean)]
    torch.testing.assert_close(smoothed.losses, t([-(1 - eps) * logsig(v) - eps * logsig(-v) for v in z]))
    # Equal log-probs: softplus(γ).
    same = simpo_loss(t([-1.0]), t([-1.0]), beta=beta, simpo_gamma=gamma)
    assert same.losses.item() == pytest.approx(math.log1p(math.exp(gamma)))
    with pytest.raises(ValueError, match="reference-free"):
        simpo_loss(t(chosen_mean), t(rejected_mean), t(chosen_mean), t(rejected_mean), beta=beta)


def test_alphapo_reward_shaping():
    alpha, beta, gamma = 0.25, 2.0, 0.5
    chosen_mean, rejected_mean = [-0.8, -1.5], [-1.2, -0.9]

    def s(x: float) -> float:  # (1 − p^{−α})/α with p = e^x
        return (1 - math.exp(x) ** (-alpha)) / alpha

    torch.testing.assert_close(alphapo_reward(t(chosen_mean), alpha), t([s(x) for x in chosen_mean]))
    torch.testing.assert_close(alphapo_reward(t(chosen_mean), 0.0), t(chosen_mean))
    out = simpo_loss(t(chosen_mean), t(rejected_mean), beta=beta, simpo_gamma=gamma, alpha=alpha)
    expected = [-logsig(beta * (s(c) - s(r)) - gamma) for c, r in zip(chosen_mean, rejected_mean)]
    torch.testing.assert_close(out.losses, t(expected))
    torch.testing.assert_close(out.chosen_rewards, t([beta * s(c) for c in chosen_mean]))


# ------------------------------------------------------------------------------------------------------ ORPO


def test_odds_ratio_by_hand():
    chosen_mean, rejected_mean, beta = [-0.5, -2.0, -0.05], [-2.0, -0.7, -0.05], 0.1

    def log_odds(x: float) -> float:
        p = math.exp(x)
        return math.log(p / (1 - p))

    out = odds_ratio_loss(t(chosen_mean, grad=True), t(rejected_mean), beta)
    ratios = [log_odds(c) - log_odds(r) for c, r in zip(chosen_mean, rejected_mean)]
    torch.testing.assert_close(out.log_odds_chosen, t(ratios))
    torch.testing.assert_close(out.log_odds_ratio, t([logsig(x) for x in ratios]))
    torch.testing.assert_close(out.losses, t([-beta * logsig(x) for x in ratios]))
    torch.testing.assert_close(out.chosen_rewards, t([beta * x for x in chosen_mean]))
    assert out.losses[2].item() == pytest.approx(beta * LN2)  # equal log-probs: odds ratio 1
    assert not out.log_odds_ratio.requires_grad and not out.chosen_rewards.requires_grad
    out.losses.sum().backward()


def test_odds_ratio_near_zero_logps_are_finite():
    chosen = torch.tensor([-1e-9, 0.0, -80.0], requires_grad=True)
    out = odds_ratio_loss(chosen, torch.tensor([-3.0, -3.0, -1e-9]), 0.1)
    assert torch.isfinite(out.losses).all()
    out.losses.sum().backward()
    assert torch.isfinite(chosen.grad).all()


def test_log1mexp_accuracy():
    x = t([-1e-10, -0.1, -math.log(2), -5.0, -50.0])
    expected = [math.log(-math.expm1(v)) if v > -0.6931 else math.log1p(-math.exp(v)) for v in x.tolist()]
    torch.testing.assert_close(log1mexp(x), t(expected), rtol=1e-12, atol=0)
    assert log1mexp(t([-1e-10])).item() == pytest.approx(math.log(1e-10), rel=1e-8)


# -------------------------------------------------------------------------------- sequence reductions


def _logits_with_known_logps() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vocab 4. Uniform logits give log(1/4); logits [ln 3, 0, 0, 0] with label 0 give log(3/6) = log(1/2).

    Row 0: 3 completion tokens (uniform, half, half) then 1 pad; row 1: 1 prompt token, 1 completion token (uniform),
    2 pads. Pads hold huge logits and a label whose log-prob is about -1e4, so any leak shows.
    """
    half = [math.log(3), 0.0, 0.0, 0.0]
    uniform = [0.0, 0.0, 0.0, 0.0]
    pad = [1e4, 0.0, 0.0, 0.0]
    logits = torch.tensor([[uniform, half, half, pad], [half, uniform, pad, pad]], dtype=torch.float64)
    labels = torch.tensor([[2, 0, 0, 1], [0, 3, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0]])
    per_token = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return per_token, mask, logits


def test_sequence_logps_sum_and_mean_with_padding():
    per_token, mask, _ = _logits_with_known_logps()
    ln4, ln2 = math.log(4), math.log(2)
    total = sequence_logps(per_token, mask, "sum")
    torch.testing.assert_close(total, t([-ln4 - 2 * ln2, -ln4]))
    mean = sequence_logps(per_token, mask, "mean")
    torch.testing.assert_close(mean, t([(-ln4 - 2 * ln2) / 3, -ln4]))
    # -inf at padded positions is selected out, not multiplied by 0 (which would give NaN).
    poisoned = per_token.masked_fill(mask == 0, float("-inf"))
    torch.testing.assert_close(sequence_logps(poisoned, mask, "sum"), total)
    empty = sequence_logps(per_token, torch.zeros_like(mask), "mean")
    assert empty.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="'sum' or 'mean'"):
        sequence_logps(per_token, mask, "max")


def test_ld_dpo_logps_by_hand():
    per_token = t([[9.0, -1.0, -2.0, -3.0, -4.0], [9.0, 9.0, -5.0, -6.0, 9.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    public = torch.tensor([2, 2])
    out = ld_dpo_logps(per_token, mask, public, ld_alpha=0.25)
    torch.testing.assert_close(out, t([-1.0 - 2.0 + 0.25 * (-3.0 - 4.0), -5.0 - 6.0]))
    torch.testing.assert_close(ld_dpo_logps(per_token, mask, public, 1.0), sequence_logps(per_token, mask))
    with pytest.raises(ValueError, match="ld_alpha"):
        ld_dpo_logps(per_token, mask, public, 1.5)


def test_wpo_weights_by_hand():
    """Vocab 2, logits [ln 3, 0]: p = [3/4, 1/4], Σp² = 5/8. Aligned log-probs: label 0 → log(1.2), label 1 → log(0.4).
    Uniform logits: p(y) = Σp² = 1/2 → aligned 0, weight 1."""
    logits = torch.tensor([[[math.log(3), 0.0], [math.log(3), 0.0], [0.0, 0.0]], [[0.0, 0.0], [5.0, 5.0], [0.0, 9.0]]])
    labels = torch.tensor([[0, 1, 0], [1, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    per_token = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    weights = wpo_sequence_weights(per_token, logits, mask)
    torch.testing.assert_close(weights, torch.tensor([math.sqrt(1.2 * 0.4), 1.0]))
    assert not weights.requires_grad
    torch.testing.assert_close(
        wpo_pair_weights(torch.tensor([0.5, 1.2]), torch.tensor([0.8, 1.2])), torch.tensor([0.4, 1.0])
    )


def test_assembled_losses_keep_the_shared_signature_and_python_call_rules():
    """Every paired loss is its formula behind one shared signature: the four log-prob inputs (references default
    to None), keyword-only `beta`, then its own options; f-divergence options exactly for F_DIVERGENCE_LOSS_TYPES
    (besides sft, which accepts any divergence through `preference_loss`). Calls bind like a Python function."""
    import inspect

    shared = ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "beta"]
    for loss_type, fn in PREFERENCE_LOSSES.items():
        parameters = inspect.signature(fn).parameters
        assert list(parameters)[:5] == shared, loss_type
        assert (
            parameters["ref_chosen_logps"].default is None
            and parameters["beta"].kind is inspect.Parameter.KEYWORD_ONLY
        )
        has_divergence = "f_divergence_type" in parameters
        assert has_divergence == (loss_type in F_DIVERGENCE_LOSS_TYPES - {"sft"}), loss_type
        assert fn.__name__.endswith("_loss") and fn.__doc__
    args = (t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R))
    by_keyword = sigmoid_loss(
        chosen_logps=args[0], rejected_logps=args[1], ref_chosen_logps=args[2], ref_rejected_logps=args[3], beta=BETA
    )
    torch.testing.assert_close(by_keyword.losses, sigmoid_loss(*args, beta=BETA).losses, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"sigmoid_loss\(\) got an unexpected keyword argument 'bogus'"):
        sigmoid_loss(*args, beta=BETA, bogus=1)
    with pytest.raises(TypeError, match="sigmoid_loss"):
        sigmoid_loss(*args, BETA)  # beta is keyword-only
    with pytest.raises(TypeError, match="beta"):
        ipo_loss(*args)
