"""[`BEMACallback`]: a bias-corrected exponential moving average (BEMA, arXiv 2508.00180) of the trained weights.

With `t` the number of steps since `update_after`, `θ_0` the weights at `update_after` and `θ_t` the current ones,
every `update_freq` steps the callback computes

    β_t = max((lag + multiplier·t)^(−ema_power), min_ema_multiplier)      EMA weight of the current step
    α_t = (lag + multiplier·t)^(−bias_power)                              weight of the bias correction
    EMA_t = (1 − β_t)·EMA_{t−1} + β_t·θ_t                                 (EMA_0 = θ_0)
    BEMA_t = α_t·(θ_t − θ_0) + EMA_t

A plain EMA lags behind the weights (its bias); the correction term adds back a decaying fraction of the distance
travelled since `θ_0`. The three buffers live on `device` (CPU by default), never on the accelerator. At the end of
training the BEMA weights are saved as a model in `<output_dir>/bema`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import TrainerCallback


class BEMACallback(TrainerCallback):
    """Keep a bias-corrected EMA (BEMA) of the model's trainable weights and save it at the end of training.

    Args:
        update_freq (`int`, *optional*, defaults to `400`):
            Update the averages every this many optimizer steps (must be >= 1).
        ema_power (`float`, *optional*, defaults to `0.5`):
            Power κ of the EMA weight `β_t = (lag + multiplier·t)^(−κ)`; `0` makes the EMA the current weights.
        bias_power (`float`, *optional*, defaults to `0.2`):
            Power η of the correction weight `α_t = (lag + multiplier·t)^(−η)`.
        lag (`int`, *optional*, defaults to `10`):
            Offset ρ of both schedules (keeps the first weights below 1).
        update_after (`int`, *optional*, defaults to `0`):
            Step at which `θ_0` is taken; no update happens before it.
        multiplier (`float`, *optional*, defaults to `1.0`):
            Time scale γ of both schedules.
        min_ema_multiplier (`float`, *optional*, defaults to `0.0`):
            Lower bound of `β_t`.
        device (`str`, *optional*, defaults to `"cpu"`):
            Where the `θ_0`, EMA and BEMA buffers live.

    Example:
    ```python
    from trl import BEMACallback, SFTTrainer

    trainer = SFTTrainer(model, train_dataset=dataset, callbacks=[BEMACallback(update_freq=50)])
    trainer.train()  # the averaged model is in <output_dir>/bema
    ```
    """

    def __init__(
        self,
        update_freq: int = 400,
        ema_power: float = 0.5,
        bias_power: float = 0.2,
        lag: int = 10,
        update_after: int = 0,
        multiplier: float = 1.0,
        min_ema_multiplier: float = 0.0,
        device: str = "cpu",
    ):
        if update_freq < 1:
            raise ValueError(f"BEMACallback needs update_freq >= 1 (got {update_freq}).")
        if lag + multiplier <= 0:
            raise ValueError(f"lag + multiplier must be positive (got lag={lag}, multiplier={multiplier}).")
        self.update_freq = update_freq
        self.ema_power = ema_power
        self.bias_power = bias_power
        self.lag = lag
        self.update_after = update_after
        self.multiplier = multiplier
        self.min_ema_multiplier = min_ema_multiplier
        self.device = torch.device(device)
        self.names: list[str] = []
        self.theta0: list[torch.Tensor] = []
        self.ema: list[torch.Tensor] = []
        self.bema: list[torch.Tensor] = []
        self.num_updates = 0

    # ------------------------------------------------------------------------------------------------ schedules
    def ema_beta(self, t: int) -> float:
        """EMA weight `β_t` of the current weights `t` steps after `update_after`."""
        return max((self.lag + self.multiplier * t) ** (-self.ema_power), self.min_ema_multiplier)

    def bema_alpha(self, t: int) -> float:
        """Weight `α_t` of the bias correction `θ_t − θ_0` `t` steps after `update_after`."""
        return (self.lag + self.multiplier * t) ** (-self.bias_power)

    # ------------------------------------------------------------------------------------------------ buffers
    @staticmethod
    def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        return [(name, param) for name, param in model.named_parameters() if param.requires_grad]

    @torch.no_grad()
    def _start(self, model: torch.nn.Module) -> None:
        params = self._trainable(model)
        self.names = [name for name, _ in params]
        self.theta0 = [param.detach().to(self.device, dtype=torch.float32, copy=True) for _, param in params]
        self.ema = [theta.clone() for theta in self.theta0]
        self.bema = [theta.clone() for theta in self.theta0]

    @torch.no_grad()
    def _update(self, model: torch.nn.Module, t: int) -> None:
        beta, alpha = self.ema_beta(t), self.bema_alpha(t)
        for (_, param), theta0, ema, bema in zip(
            self._trainable(model), self.theta0, self.ema, self.bema, strict=True
        ):
            theta = param.detach().to(self.device, dtype=torch.float32)
            ema.mul_(1.0 - beta).add_(theta, alpha=beta)
            torch.add(ema, theta - theta0, alpha=alpha, out=bema)
        self.num_updates += 1

    @staticmethod
    def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
        return getattr(model, "module", model)

    @torch.no_grad()
    def load_bema_into(self, model: torch.nn.Module) -> None:
        """Copy the current BEMA weights into `model` (same trainable parameter names as the trained model).

        Args:
            model (`torch.nn.Module`):
                The model to overwrite, e.g. a reference model.
        """
        params = dict(self._trainable(self._unwrap(model))) or dict(self._unwrap(model).named_parameters())
        for name, bema in zip(self.names, self.bema, strict=True):
            params[name].copy_(bema.to(params[name].device, params[name].dtype))

    # ------------------------------------------------------------------------------------------------ events
    def _due(self, step: int) -> bool:
        return step >= self.update_after and (step - self.update_after) % self.update_freq == 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and not self.theta0 and self.update_after == 0:
            self._start(self._unwrap(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or state.global_step < self.update_after:
            return
        model = self._unwrap(model)
        if not self.theta0:  # first step at or after update_after: θ_0 is taken now
            self._start(model)
            return
        if self._due(state.global_step):
            self._update(model, state.global_step - self.update_after)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is None or not self.theta0 or not state.is_world_process_zero:
            return
        self.save_bema_model(self._unwrap(model), os.path.join(args.output_dir, "bema"))

    @torch.no_grad()
    def save_bema_model(self, model: torch.nn.Module, path: str) -> None:
        """Save `model` with the BEMA weights swapped in to `path` (`save_pretrained`), then restore its weights.

        Args:
            model (`PreTrainedModel`):
                The trained model.
            path (`str`):
                Output directory.
        """
        params = dict(self._trainable(model))
        backup = {name: params[name].detach().to("cpu", copy=True) for name in self.names}
        self.load_bema_into(model)
        try:
            _save(model, path)
        finally:
            for name, value in backup.items():
                params[name].copy_(value.to(params[name].device))


def _save(model: Any, path: str) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(path)
        return
    os.makedirs(path, exist_ok=True)
    from safetensors.torch import save_file

    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, f"{path}/model.safetensors")
