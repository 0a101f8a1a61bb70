"""Per-token log-probabilities and entropies computed without materialising more logits than needed.

- From logits already computed: [`selective_log_softmax`], [`entropy_from_logits`] and
  [`selective_log_softmax_and_entropy`] work a block of rows at a time.
- From hidden states: [`chunked_selective_log_softmax`] (autograd function [`ChunkedLogProbFunction`]) projects a
  chunk of labelled positions through the LM head at a time, in the forward and the backward pass.
- From a model and a batch: [`token_logps`] runs the forward pass every trainer uses, with the LM head only at the
  positions that predict a scored token (padded or padding-free, logits or chunked), returning [`TokenLogps`].
"""

from .chunked_log_prob import ChunkedLogProbFunction, chunked_selective_log_softmax
from .log_softmax import entropy_from_logits, selective_log_softmax, selective_log_softmax_and_entropy
from .token_logps import TokenLogps, token_logps


__all__ = [
    "ChunkedLogProbFunction",
    "TokenLogps",
    "chunked_selective_log_softmax",
    "entropy_from_logits",
    "selective_log_softmax",
    "selective_log_softmax_and_entropy",
    "token_logps",
]
