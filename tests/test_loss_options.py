"""The loss options of GRPO and RLOO: one frozen `PolicyLossOptions` built from the config at init, unpacked into
`policy_loss` at the call, with the same numbers as the field-by-field keyword calls it replaced."""

import dataclasses
import warnings

import pytest
import torch

from trl import GRPOConfig, RLOOConfig
from trl.losses import PolicyLossOptions, policy_loss, policy_loss_from_options


def fixed_batch():
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 5, generator=g)
    old = logps + 0.3 * torch.randn(4, 5, generator=g)
    ref = logps + 0.2 * torch.randn(4, 5, generator=g)
    advantages = torch.randn(4, generator=g)
    mask = torch.ones(4, 5)
    mask[0, 3:] = 0
    mask[2, 4:] = 0
    return logps, old, ref, advantages, mask


def config(cls, tmp_path, **fields):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(output_dir=str(tmp_path), report_to="none", **fields)


# Recorded from the trainers' keyword calls (every option copied from the config) before the options object.
GRPO_BEFORE = [
    ({}, -0.35316920280456543),
    ({"loss_type": "grpo", "beta": 0.1}, -0.403031587600708),
    ({"loss_type": "dr_grpo", "epsilon": 0.1, "epsilon_high": 0.3}, -0.002933182055130601),
    ({"loss_type": "sapo", "sapo_temperature_neg": 2.0}, -0.9733831286430359),
    ({"loss_type": "vespo", "vespo_k_pos": 1.5}, 0.1315162479877472),
    (
        {"importance_sampling_level": "sequence", "delta": 1.5, "beta": 0.05, "use_bias_correction_kl": True},
        -0.35385775566101074,
    ),
    ({"loss_type": "cispo", "epsilon_high": 4.0}, 0.06713232398033142),
]
RLOO_BEFORE = [({}, -0.2046588957309723), ({"epsilon": 0.1, "epsilon_high": 0.4}, -0.21413007378578186)]


def rloo_options(args) -> PolicyLossOptions:
    return PolicyLossOptions(
        loss_type="grpo",
        importance_sampling_level="sequence_sum",
        epsilon=args.epsilon,
        epsilon_high=args.epsilon_high,
    )


def test_options_are_frozen_and_default_to_the_loss_defaults():
    options = PolicyLossOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.epsilon = 0.5
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(policy_loss).parameters.items()}
    assert options.as_kwargs() == {name: defaults[name] for name in options.as_kwargs()}
    # Exactly the configuration keywords, in the signature's order: no per-batch tensor becomes a field.
    assert list(options.as_kwargs()) == [
        "loss_type", "importance_sampling_level", "epsilon", "epsilon_high", "delta", "beta", "max_completion_length",
        "use_bias_correction_kl", "sapo_temperature_pos", "sapo_temperature_neg", "vespo_k_pos", "vespo_lambda_pos",
        "vespo_k_neg", "vespo_lambda_neg",
    ]  # fmt: skip
    assert PolicyLossOptions.__module__ == "trl.losses.policy" and "frozen" in PolicyLossOptions.__doc__


def test_options_are_built_from_the_config(tmp_path):
    args = config(GRPOConfig, tmp_path, loss_type="sapo", epsilon=0.3, sapo_temperature_neg=2.0, beta=0.2)
    options = PolicyLossOptions.from_config(args)
    assert (options.loss_type, options.epsilon, options.sapo_temperature_neg, options.beta) == ("sapo", 0.3, 2.0, 0.2)
    assert options.max_completion_length == args.max_completion_length
    assert PolicyLossOptions.from_config(args, beta=0.0).beta == 0.0
    with pytest.raises(AttributeError, match="loss_type"):
        PolicyLossOptions.from_config(config(RLOOConfig, tmp_path))  # RLOO builds its own, field by field


@pytest.mark.parametrize("fields, before", GRPO_BEFORE)
def test_grpo_loss_is_unchanged(tmp_path, fields, before):
    logps, old, ref, advantages, mask = fixed_batch()
    args = config(GRPOConfig, tmp_path, **fields)
    loss, _ = policy_loss_from_options(
        logps, old, advantages, mask, PolicyLossOptions.from_config(args),
        ref_logps_B_T=ref if args.beta else None, num_items_in_batch=mask.sum(),
    )  # fmt: skip
    assert loss.item() == before


@pytest.mark.parametrize("fields, before", RLOO_BEFORE)
def test_rloo_loss_is_unchanged(tmp_path, fields, before):
    logps, old, _, advantages, mask = fixed_batch()
    loss, _ = policy_loss_from_options(
        logps, old, advantages, mask, rloo_options(config(RLOOConfig, tmp_path, **fields))
    )
    assert loss.item() == before


def test_an_option_cannot_also_be_a_keyword():
    logps, old, _, advantages, mask = fixed_batch()
    with pytest.raises(TypeError, match="beta"):
        policy_loss_from_options(logps, old, advantages, mask, PolicyLossOptions(), beta=0.1)


def test_trainers_build_the_options_once_from_the_config(tmp_path):
    from tests.test_grpo_trainer import make_trainer as make_grpo
    from tests.test_rloo_trainer import make_trainer as make_rloo

    grpo = make_grpo(tmp_path / "grpo", loss_type="bnpo", epsilon=0.25, delta=2.0)
    assert grpo.loss_options == PolicyLossOptions.from_config(grpo.args)
    assert (grpo.loss_options.loss_type, grpo.loss_options.epsilon, grpo.loss_options.delta) == ("bnpo", 0.25, 2.0)
    rloo = make_rloo(tmp_path / "rloo", epsilon=0.15)
    assert rloo.loss_options == rloo_options(rloo.args)
    assert rloo.loss_options.epsilon == 0.15 and rloo.loss_options.beta == 0.0
