"""The v0.24 import path of the vLLM client; the implementation lives in `trl.generation.vllm_client`."""

from ..generation.vllm_client import (
    VLLMClient,
    decode_tensor,
    encode_tensor,
    parse_logprobs,
    pil_to_base64,
    to_openai_messages,
)


__all__ = ["VLLMClient", "decode_tensor", "encode_tensor", "parse_logprobs", "pil_to_base64", "to_openai_messages"]
