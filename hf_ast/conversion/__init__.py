"""Checkpoint conversion: pure functions over state dicts, and the `hf-ast-convert` command around them.

- `state_dicts`: reading checkpoints (files, folders, Hub ids), recognising their format by
  telltale keys, and mapping their tensor names to hf-ast's.
- `deit`: ImageNet DeiT/ViT (transformers or timm) -> AST initialisation (`from_deit`).
- `ast_checkpoints`: trained ASTs: the reference repository's `.pth`, transformers' AST, and
  hf-ast back to transformers.
- `cli`: `hf-ast-convert` (`python -m hf_ast.conversion.cli`): reading, checking and saving.

The package exports the pure modules' public functions (each module's `__all__`).
"""

from . import ast_checkpoints, deit, state_dicts
from .ast_checkpoints import *  # noqa: F403
from .deit import *  # noqa: F403
from .state_dicts import *  # noqa: F403

__all__ = [*ast_checkpoints.__all__, *deit.__all__, *state_dicts.__all__]
