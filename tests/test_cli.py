"""jobs.cli: defaults < YAML < flags, derived from one dataclass."""

from __future__ import annotations

import sys
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


def _help_text(capsys, cls, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        config_from_args(cls, list(argv), "t")
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_shows_the_essential_flags_under_headings(capsys):
    from pipelines.tagging.config import TagConfig

    text = _help_text(capsys, TagConfig, "--help")
    for flag in ("--model", "--input", "--output", "--actors", "--runtime", "--config", "--help-all"):
        assert flag in text
    for heading in ("inputs and outputs:", "model:", "resources:"):
        assert heading in text
    assert "--read-retry-delay-s" not in text and "--cpus-per-task" not in text
    assert "--help-all lists every flag" in text
    assert len(text.splitlines()) <= 40  # one screen


def test_help_all_shows_every_flag_grouped(capsys):
    import dataclasses

    from pipelines.tagging.config import TagConfig

    text = _help_text(capsys, TagConfig, "--help-all")
    for f in dataclasses.fields(TagConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert "advanced:" in text and "resources:" in text
    assert text.index("resources:") < text.index("--cpus-per-task") < text.index("advanced:") < text.index("--read-retry-delay-s")


def test_hidden_flags_are_still_accepted():
    from pipelines.tagging.config import TagConfig

    cfg = config_from_args(TagConfig, ["--model", "m", "--read-retry-delay-s", "0.5", "--cpus-per-task", "0.5", "--all-scores"], "t")
    assert (cfg.read_retry_delay_s, cfg.cpus_per_task, cfg.all_scores) == (0.5, 0.5, True)


@pytest.mark.parametrize("job", ["jobs.train", "jobs.tag", "jobs.evaluate", "jobs.serve"])
def test_every_command_shows_a_short_help(capsys, job):
    import importlib

    from jobs.cli import run_main

    with pytest.raises(SystemExit):
        run_main(importlib.import_module(job).main, ["--help"])
    lines = capsys.readouterr().out.splitlines()
    shown = [line for line in lines if line.lstrip().startswith("--") and not line.lstrip().startswith(("--help", "--verbose", "--config"))]
    assert 3 <= len(shown) <= 13 and len(lines) <= 42


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_onnx_runtime_without_the_extra_is_one_line_naming_it(monkeypatch, capsys, runtime):
    import jobs.tag
    from jobs.cli import run_main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if ray-ner[onnx] were not installed
    with pytest.raises(SystemExit) as exit_:
        run_main(jobs.tag.main, ["--model", "m", "--input", "in", "--output", "out", "--runtime", runtime])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnxruntime" in err and "pip install 'ray-ner[onnx]'" in err
