"""Deprecated alias of `hf_ast.training.recipes`, kept for one release: import from there instead."""

import sys

from .training import recipes

sys.modules[__name__] = recipes
