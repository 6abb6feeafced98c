"""cluster.yaml, validated offline with the Ray cluster launcher's own schema and checks.

``prepare_config`` / ``validate_config`` are private Ray API (ray.autoscaler._private.util): the
broken-variant tests pin the behaviour this check relies on, so a Ray upgrade that changes it
fails here instead of letting a bad cluster.yaml through.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("jsonschema")  # validate_config needs it
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(CLUSTER.read_text())


def _validate(config):
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_schema_and_semantic_checks(config):
    _validate(config)


def test_cluster_layout_head_without_trials_and_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head never runs a trial
    gpu_counts = sorted(t["resources"].get("GPU", 0) for name, t in types.items()
                        if name != config["head_node_type"])
    assert gpu_counts == [1, 4]
    for name, node in types.items():
        if name != config["head_node_type"]:
            assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    assert config["provider"]["type"] == "aws"
    assert re.fullmatch(r"rayproject/ray:2\.60\.\d+-py311-gpu", config["docker"]["image"])
    assert any("pip install" in c and "/home/ray/raycl" in c for c in config["setup_commands"])
    assert "/home/ray/raycl" in config["file_mounts"]


def test_cluster_yaml_holds_no_credentials():
    text = CLUSTER.read_text()
    for secret in ("aws_access_key", "aws_secret", "ssh_private_key", "KeyName", "token"):
        assert secret.lower() not in text.lower(), secret


@pytest.mark.parametrize("breakage", ["unknown_key", "wrong_head_node_type",
                                      "fractional_gpu", "min_workers_above_max"])
def test_broken_variants_are_rejected(config, breakage):
    broken = copy.deepcopy(config)
    types = broken["available_node_types"]
    if breakage == "unknown_key":
        types["gpu_1x"]["min_worker"] = 1  # typo of min_workers
    elif breakage == "wrong_head_node_type":
        broken["head_node_type"] = "cpu_head"
    elif breakage == "fractional_gpu":
        types["gpu_1x"]["resources"]["GPU"] = 0.5
    elif breakage == "min_workers_above_max":
        types["gpu_1x"]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises(Exception) as caught:
        _validate(broken)
    assert type(caught.value).__name__ in ("ValidationError", "ValueError")
