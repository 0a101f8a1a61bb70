"""trl: post-training for transformer language models (SFT, preference optimisation, RL)."""

from typing import TYPE_CHECKING

from .import_utils import install_lazy_module


def _read_version() -> str:
    """The `VERSION` file of a source checkout (fresher than an editable install's metadata), else the metadata."""
    from pathlib import Path

    source = Path(__file__).resolve().parent.parent / "VERSION"
    if source.is_file() and (source.parent / "pyproject.toml").is_file():
        return source.read_text().strip()
    try:
        from importlib.metadata import version

        return version("trl")
    except Exception:
        return "unknown"


__version__ = _read_version()

# The package's public names, written once: each `from .submodule import Name` line below is read by
# `install_lazy_module` (trl/import_utils.py), which imports the submodule when the name is first used.
if TYPE_CHECKING:
    from .chat_template_utils import (
        add_response_schema,
        clone_chat_template,
        get_training_chat_template,
        setup_chat_format,
        supports_tool_calling,
    )
    from .data_utils import (
        apply_chat_template,
        extract_prompt,
        is_conversational,
        is_conversational_from_value,
        maybe_apply_chat_template,
        maybe_convert_to_chatml,
        maybe_extract_prompt,
        maybe_unpair_preference_dataset,
        pack_dataset,
        prepare_multimodal_messages,
        truncate_dataset,
        unpair_preference_dataset,
    )
    from .judges import (
        AllTrueJudge,
        BaseBinaryJudge,
        BaseJudge,
        BasePairwiseJudge,
        BaseRankJudge,
        HfPairwiseJudge,
        OpenAIPairwiseJudge,
        PairRMJudge,
        RewardModelJudge,
    )
    from .models import (
        AutoModelForCausalLMWithValueHead,
        AutoModelForSeq2SeqLMWithValueHead,
        PreTrainedModelWrapper,
        create_reference_model,
    )
    from .scripts import DatasetMixtureConfig, ScriptArguments, TrlParser, get_dataset, init_zero_verbose
    from .trainer import (
        BCOConfig,
        BCOTrainer,
        BEMACallback,
        CPOConfig,
        CPOTrainer,
        DistillationConfig,
        DistillationTrainer,
        DPOConfig,
        DPOTrainer,
        FDivergenceConstants,
        FDivergenceType,
        GKDConfig,
        GKDTrainer,
        GRPOConfig,
        GRPOTrainer,
        KTOConfig,
        KTOTrainer,
        LogCompletionsCallback,
        ModelConfig,
        NashMDConfig,
        NashMDTrainer,
        OnlineDPOConfig,
        OnlineDPOTrainer,
        ORPOConfig,
        ORPOTrainer,
        PPOConfig,
        PPOTrainer,
        PRMConfig,
        PRMTrainer,
        RewardConfig,
        RewardTrainer,
        RichProgressCallback,
        RLOOConfig,
        RLOOTrainer,
        SFTConfig,
        SFTTrainer,
        SyncRefModelCallback,
        WeaveCallback,
        WinRateCallback,
        XPOConfig,
        XPOTrainer,
        get_kbit_device_map,
        get_peft_config,
        get_quantization_config,
    )
else:
    install_lazy_module(globals(), extra_objects={"__version__": __version__})
