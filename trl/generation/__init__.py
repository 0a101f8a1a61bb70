"""
One generation interface, several backends: transformers `generate` (default), vLLM colocated, vLLM server.

```python
from trl.generation import SamplingParams, TransformersBackend

backend = TransformersBackend(model)
result = backend.generate(prompt_ids, SamplingParams(n=4, temperature=1.0, max_tokens=64, return_logprobs=True))
result.completion_ids, result.logprobs, result.truncated
```
"""

from typing import TYPE_CHECKING

from ..import_utils import _LazyModule


_import_structure = {
    "base": [
        "GenerationBackend",
        "GenerationResult",
        "SamplingParams",
        "build_generation_backend",
        "inference_param_name",
        "iter_inference_weights",
    ],
    "server_backend": ["VLLMServerBackend"],
    "transformers_backend": ["TransformersBackend", "unwrap_model_for_generation"],
    "vllm_client": ["VLLMClient"],
    "vllm_generation": ["VLLMGeneration"],
}

if TYPE_CHECKING:
    from .base import (
        GenerationBackend,
        GenerationResult,
        SamplingParams,
        build_generation_backend,
        inference_param_name,
        iter_inference_weights,
    )
    from .server_backend import VLLMServerBackend
    from .transformers_backend import TransformersBackend, unwrap_model_for_generation
    from .vllm_client import VLLMClient
    from .vllm_generation import VLLMGeneration
else:
    import sys

    sys.modules[__name__] = _LazyModule(__name__, globals()["__file__"], _import_structure)
