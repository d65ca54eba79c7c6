"""The run config's prompts section reaches the adapter; profiles record the prompt choices."""

from aia.measure.teacher import profile_model
from aia.testing.tiny import tiny_emu3, tiny_janus
from aia.training.config import load_config
from aia.training.setup import cfg_drop, setup
from tests.training.test_trainer import make_cfg


def test_released_prompts_reach_training_and_profiles(tiny_data, tmp_path):
    cfg = make_cfg(tiny_data, tmp_path / "run", "prompts.system_prompt=none", "prompts.turn_separator=bos",
                   "prompts.answer_space=false")
    run = setup(cfg, *tiny_janus(seed=0))
    adapter = run.core.adapter
    assert adapter.prompt_config.system_prompt == "none" and adapter.prompt_config.turn_separator == "bos"
    assert cfg_drop(cfg, adapter) == 0.1  # Janus: the released AIA code's rate
    model, processor = tiny_janus(seed=0)
    profile = profile_model(model, processor, tiny_data[0], "und", samples=2, progress=False)
    assert profile.settings["prompts"]["system_prompt"].startswith("You are a helpful language and vision")


def test_cfg_drop_defaults_per_family(tiny_data, tmp_path):
    from aia.adapters import get_adapter

    cfg = make_cfg(tiny_data, tmp_path / "run")
    assert cfg_drop(cfg, get_adapter(*tiny_emu3(seed=0))) == 0.05  # BAAI's null_prompt_prob
    assert cfg_drop(load_config(None, [f"data.und={tiny_data[0]}", "data.cfg_drop=0.2"], check_paths=False),
                    get_adapter(*tiny_emu3(seed=0))) == 0.2
