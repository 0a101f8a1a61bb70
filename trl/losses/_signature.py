"""Public loss functions assembled from a formula: the inputs a family of losses shares are declared once, each
formula declares only its own keyword options, and the family's plumbing (checks, log-ratios, outputs) runs in one
place ([`public_loss`]). The paired preference losses and the unpaired ones are built this way."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any


Parameter = inspect.Parameter

# Every loss built here takes the inverse temperature β as a required keyword.
BETA = Parameter("beta", Parameter.KEYWORD_ONLY, annotation="float")


def tensor_inputs(names: str, *, nullable_from: int, default_from: int | None = None) -> tuple[Parameter, ...]:
    """Positional-or-keyword tensor parameters named by `names` (space-separated), in order: from position
    `nullable_from` on they also accept `None`, and from `default_from` on (if given) they default to it."""
    parameters = []
    for position, name in enumerate(names.split()):
        annotation = "torch.Tensor | None" if position >= nullable_from else "torch.Tensor"
        default = None if default_from is not None and position >= default_from else Parameter.empty
        parameters.append(Parameter(name, Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation))
    return tuple(parameters)


def keyword_options(function: Callable[..., Any]) -> tuple[Parameter, ...]:
    """The keyword-only parameters of `function` (a formula's own options), with their defaults."""
    return tuple(p for p in inspect.signature(function).parameters.values() if p.kind is Parameter.KEYWORD_ONLY)


def public_loss(
    formula: Callable[..., Any],
    inputs: Sequence[Parameter],
    run: Callable[[Mapping[str, Any], dict[str, Any]], Any],
    *,
    returns: str,
    leading_options: Sequence[Parameter] = (),
    extra_options: Sequence[Parameter] = (),
) -> Callable[..., Any]:
    """The public loss named, documented and placed like `formula`, with the signature
    `(*inputs, *, beta, *leading_options, <formula's keyword-only options>, *extra_options)`.

    A call binds its arguments to that signature (defaults applied; a wrong call raises `TypeError` naming the
    function, as Python would) and returns `run(arguments, options)`, `options` holding the formula's own keyword
    options by name.
    """
    own = keyword_options(formula)
    parameters = [*inputs, BETA, *leading_options, *own, *extra_options]
    signature = inspect.Signature(parameters, return_annotation=returns)
    name = formula.__name__

    def loss(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{name}() {error}") from None
        bound.apply_defaults()
        arguments = bound.arguments
        return run(arguments, {option.name: arguments[option.name] for option in own})

    loss.__name__, loss.__qualname__ = name, formula.__qualname__
    loss.__doc__, loss.__module__ = formula.__doc__, formula.__module__
    loss.__signature__ = signature
    return loss
