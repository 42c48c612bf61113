"""Deprecated alias of `hf_ast.conversion.cli` (and the conversions it re-exported); removed in the next release.

Import from `hf_ast.conversion` instead; `python -m hf_ast.convert` still runs `hf-ast-convert`.
"""

import sys

from .conversion.ast_checkpoints import (
    hf_ast_config_from_transformers,
    hf_ast_config_to_transformers,
    transformers_ast_state_dict_to_hf_ast,
)
from .conversion.cli import (
    LOGITS_ATOL,
    check_output_folder,
    check_same_logits,
    feature_extractor_for,
    main,
    parse_args,
    parse_labels,
    save_hf_ast,
    staged_output_folder,
)
from .feature_extraction_hf_ast import AUDIOSET_MEAN, AUDIOSET_STD

__all__ = [
    "AUDIOSET_MEAN",
    "AUDIOSET_STD",
    "LOGITS_ATOL",
    "check_output_folder",
    "check_same_logits",
    "feature_extractor_for",
    "hf_ast_config_from_transformers",
    "hf_ast_config_to_transformers",
    "main",
    "parse_args",
    "parse_labels",
    "save_hf_ast",
    "staged_output_folder",
    "transformers_ast_state_dict_to_hf_ast",
]

if __name__ == "__main__":
    sys.exit(main())
