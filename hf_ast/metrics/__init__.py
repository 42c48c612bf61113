"""Deprecated alias of `hf_ast.training.metrics`, kept for one release: import from there instead."""

import sys

from ..training import metrics

sys.modules[__name__] = metrics
