"""The quick start's building blocks (`scripts/quickstart.py`): the GRPO stage's reward rises after a short SFT, the
figure and the report are written, and the stage configs it writes parse with the `trl` commands' parsers."""

import importlib.util
import os
import sys

import pytest

from trl.testing import get_tiny_model_path


QUICKSTART = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "quickstart.py")


@pytest.fixture(scope="module")
def quickstart():
    spec = importlib.util.spec_from_file_location("trl_quickstart", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    sys.modules["trl_quickstart"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    module.quiet_libraries()
    yield module
    sys.modules.pop("trl_quickstart", None)


def test_digit_reward(quickstart):
    assert quickstart.digit_reward([" 77", "It is 7.", "blue", " "]) == [1.0, 1 / 8, 0.0, 0.0]


def test_grpo_stage_reward_rises_after_sft(quickstart, tmp_path):
    sft = quickstart.run_sft(get_tiny_model_path("qwen2"), str(tmp_path / "sft"), steps=30)
    loss = sft.curve("loss")
    assert len(loss) == 30 and sum(loss[-5:]) < sum(loss[:5])
    grpo = quickstart.run_grpo(str(tmp_path / "sft"), str(tmp_path / "grpo"), steps=30)
    reward = grpo.curve("reward")
    assert len(reward) == 30
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    assert last > first + 0.15, reward  # about 0.06 -> 0.29 on CPU with this seed
    assert (tmp_path / "grpo" / "config.json").exists()


def test_figure_and_report(quickstart, tmp_path):
    histories = [
        quickstart.StageHistory("SFT", {"loss": [(1, 3.0), (2, 2.0), (3, 1.5)]}, 1.0),
        quickstart.StageHistory("GRPO", {"reward": [(1, 0.2), (2, 0.6), (3, 0.9)], "loss": [(1, 0.0)]}, 2.0),
    ]
    assert quickstart.summary_lines(histories)[1].startswith("GRPO  reward 0.200 -> 0.900")
    figure = None
    if importlib.util.find_spec("matplotlib") is not None:
        figure = quickstart.write_figure(histories, str(tmp_path / "curves.png"))
        with open(figure, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    report = quickstart.write_report(histories, figure, {"The sky is": " blue"}, str(tmp_path / "report.html"))
    text = open(report).read()
    assert "<td>GRPO</td><td>reward</td><td>0.200</td><td>0.900</td>" in text and " blue" in text
    assert ("data:image/png;base64," in text) == (figure is not None)


def test_stage_configs_parse_with_the_cli_parsers(quickstart, tmp_path, monkeypatch):
    from trl.scripts import dpo, grpo, sft

    quickstart.write_stage_configs("some/model", str(tmp_path))
    for name, script in (("sft", sft), ("dpo", dpo), ("grpo", grpo)):
        script_args, training_args, model_args, _ = script.make_parser().parse_args_and_config(
            ["--config", str(tmp_path / f"{name}.yaml")]
        )
        assert os.path.isdir(script_args.dataset_name) and training_args.logging_steps == 1
    # `trl grpo --config grpo.yaml`, run from the configs folder, finds the reward module there.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [path for path in sys.path if path not in ("", str(tmp_path))])
    (reward,) = grpo.resolve_reward_funcs(script_args.reward_funcs, None)
    assert reward(["17", "seven"]) == [1.0, 0.0]
