"""Deprecated alias of `hf_ast.training.sampling`, kept for one release: import from there instead."""

import sys

from .training import sampling

sys.modules[__name__] = sampling
