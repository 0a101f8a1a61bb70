"""
Extras kept at their v0.24 import paths.

- `trl.extras.vllm_client`: [`~trl.generation.vllm_client.VLLMClient`] (re-exported).

Submodules are imported on use (`from trl.extras.vllm_client import VLLMClient`), so importing this package costs
nothing.
"""
