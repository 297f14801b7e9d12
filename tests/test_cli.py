"""jobs.cli: defaults < YAML < flags, derived from one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from jobs.cli import ConfigError, config_from_args


@dataclass
class Settings:
    model: str | None = field(default=None, metadata={"help": "model dir"})
    batch_size: int = 32
    lr: float = 5e-5
    use_gpu: bool = False
    actors: list[str] | None = None


def test_defaults_then_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("batch-size: 8\nlr: 0.001\nmodel: from-yaml\n")
    cfg = config_from_args(Settings, ["--config", str(cfg_file), "--lr", "0.1", "--use-gpu", "--actors", "1", "4"], "t")
    assert cfg == Settings(model="from-yaml", batch_size=8, lr=0.1, use_gpu=True, actors=["1", "4"])
    assert config_from_args(Settings, [], "t") == Settings()
    assert config_from_args(Settings, ["--use-gpu", "false"], "t").use_gpu is False


def test_unknown_yaml_setting_is_an_error(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("batch_sise: 8\n")
    with pytest.raises(ConfigError, match="unknown settings \\['batch_sise'\\]"):
        config_from_args(Settings, ["--config", str(cfg_file)], "t")


def test_unreadable_yaml_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        config_from_args(Settings, ["--config", str(tmp_path / "missing.yaml")], "t")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_args(Settings, ["--config", str(bad)], "t")
