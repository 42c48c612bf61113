"""Deprecated alias of `hf_ast.training.streaming`, kept for one release: import from there instead."""

import sys

from .training import streaming

sys.modules[__name__] = streaming
