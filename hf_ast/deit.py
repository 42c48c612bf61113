"""Deprecated alias of `hf_ast.conversion` (DeiT/ViT initialisation, reference AST checkpoints), kept for one
release: import from `hf_ast.conversion` instead.
"""

from .conversion import *  # noqa: F403
from .conversion import __all__  # noqa: F401
