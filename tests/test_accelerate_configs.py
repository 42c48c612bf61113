"""The FSDP and DeepSpeed configs shipped in examples/accelerate_configs/.

Neither runs on a CPU-only machine (with `use_cpu` Accelerate falls back to plain multi-CPU DDP),
so these tests check what can be checked here: each file is a valid `accelerate` config, and the
FSDP wrap policy finds the AST encoder layer it names in a real model.
"""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from conftest import tiny_model

from hf_ast.modeling_hf_ast import HfAstLayer

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate_configs"


def test_fsdp_config_wraps_each_encoder_layer():
    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))  # unknown top-level keys raise
    assert config.distributed_type == DistributedType.FSDP
    fsdp = config.fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"],
        auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=[fsdp["fsdp_transformer_layer_cls_to_wrap"]],
        state_dict_type=fsdp["fsdp_state_dict_type"],
    )
    plugin.set_auto_wrap_policy(tiny_model())  # raises when the class is not in the model
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {HfAstLayer}


def test_deepspeed_config_is_a_valid_accelerate_config():
    config = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.deepspeed_config["zero_stage"] == 2
    assert config.deepspeed_config["offload_optimizer_device"] == "none"


@pytest.mark.parametrize("name", ["fsdp.yaml", "deepspeed_zero2.yaml"])
def test_configs_are_documented_in_the_readme(name):
    readme = (CONFIGS.parents[1] / "README.md").read_text()
    assert f"examples/accelerate_configs/{name}" in readme
