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

from ..import_utils import install_lazy_module


# The package's public names, written once: each `from .submodule import Name` line below is read by
# `install_lazy_module` (trl/import_utils.py), which imports the submodule when the name is first used.
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
    install_lazy_module(globals())
