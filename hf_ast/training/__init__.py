"""The training side: what `examples/run_audioset.py` is built from, and what Trainer users need.

- `collator`: `AudioCollator` (decoding, mixup, features, SpecAugment, one batch at a time).
- `checkpoints`: resumable checkpoints that run no code when loaded.
- `report`: training curves and the model card a finished run leaves.
- `loop`: the training script's library half (history, data and loaders, model building,
  evaluation, normalisation statistics, saving and pushing).
- `recipes`, `augment`, `sampling`, `streaming`, `averaging`, `synthetic`, `metrics`: recipes,
  mixup and SpecAugment, balanced sampling, streamed data, weight soups, the generated dataset and
  the evaluation metric.

Importing this package imports no training extras (accelerate, datasets, evaluate); its modules
import them where they are used.
"""

from .checkpoints import atomic_save_state, latest_checkpoint, load_checkpoint, load_safe_state, save_safe_state
from .collator import AudioCollator, decode_audio
from .report import plot_history, write_model_card

__all__ = [
    "AudioCollator",
    "atomic_save_state",
    "decode_audio",
    "latest_checkpoint",
    "load_checkpoint",
    "load_safe_state",
    "plot_history",
    "save_safe_state",
    "write_model_card",
]
