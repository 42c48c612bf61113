"""Deprecated alias of `hf_ast.training.synthetic`, kept for one release: import from there instead.

`python -m hf_ast.synthetic` still runs `hf-ast-synthetic`.
"""

import sys

from .training import synthetic

if __name__ == "__main__":
    sys.exit(synthetic.main())
else:
    sys.modules[__name__] = synthetic
