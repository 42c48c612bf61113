"""Deprecated alias of `hf_ast.training.augment`, kept for one release: import from there instead."""

import sys

from .training import augment

sys.modules[__name__] = augment
