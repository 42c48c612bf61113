"""The package's layout: the old flat module paths still import, as deprecated aliases of their new homes."""

import importlib

import pytest

MOVED = {
    "hf_ast.augment": "hf_ast.training.augment",
    "hf_ast.averaging": "hf_ast.training.averaging",
    "hf_ast.metrics": "hf_ast.training.metrics",
    "hf_ast.recipes": "hf_ast.training.recipes",
    "hf_ast.sampling": "hf_ast.training.sampling",
    "hf_ast.streaming": "hf_ast.training.streaming",
    "hf_ast.synthetic": "hf_ast.training.synthetic",
}


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_a_moved_module_is_its_new_home_under_the_old_name(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_split_modules_re_export_the_names_they_had():
    from hf_ast import convert, deit, training
    from hf_ast.conversion import ast_checkpoints, cli, state_dicts
    from hf_ast.conversion import deit as conversion_deit

    assert convert.main is cli.main and convert.staged_output_folder is cli.staged_output_folder
    assert convert.hf_ast_config_to_transformers is ast_checkpoints.hf_ast_config_to_transformers
    assert deit.deit_state_dict_to_ast is conversion_deit.deit_state_dict_to_ast
    assert deit.original_ast_state_dict_to_hf_ast is ast_checkpoints.original_ast_state_dict_to_hf_ast
    assert deit.load_checkpoint is state_dicts.load_checkpoint and deit.BASE_PREFIX == state_dicts.BASE_PREFIX
    old_training_names = ("AudioCollator", "atomic_save_state", "decode_audio", "latest_checkpoint", "load_checkpoint",
                          "load_safe_state", "plot_history", "save_safe_state", "write_model_card")
    assert all(callable(getattr(training, name)) for name in old_training_names)
