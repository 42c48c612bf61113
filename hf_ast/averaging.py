"""Deprecated alias of `hf_ast.training.averaging`, kept for one release: import from there instead.

`python -m hf_ast.averaging` still runs `hf-ast-soup`.
"""

import sys

from .training import averaging

if __name__ == "__main__":
    averaging.main()
else:
    sys.modules[__name__] = averaging
