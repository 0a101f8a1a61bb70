"""Per-token log-probabilities and entropies computed without materialising more logits than needed.

- From logits already computed: [`selective_log_softmax`], [`entropy_from_logits`] and
  [`selective_log_softmax_and_entropy`] work a block of rows at a time.
- From hidden states: [`chunked_selective_log_softmax`] (autograd function [`ChunkedLogProbFunction`]) projects a
  chunk of labelled positions through the LM head at a time, in the forward and the backward pass.
"""

from .chunked_log_prob import ChunkedLogProbFunction, chunked_selective_log_softmax
from .log_softmax import entropy_from_logits, selective_log_softmax, selective_log_softmax_and_entropy


__all__ = [
    "ChunkedLogProbFunction",
    "chunked_selective_log_softmax",
    "entropy_from_logits",
    "selective_log_softmax",
    "selective_log_softmax_and_entropy",
]
