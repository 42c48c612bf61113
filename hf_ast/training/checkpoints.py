"""Checkpoints that a killed run can resume from, and that run no code when loaded.

`atomic_save_state` writes Accelerate's state to a temporary folder and renames it into place
(older checkpoints are deleted only once the new one is complete); the script's own state
(history, scheduler) goes beside it as JSON and safetensors (`save_safe_state`), so that
`load_checkpoint` unpickles nothing that could run code.
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
TMP_PREFIX = ".tmp-"
CHECKPOINT_INFO = "hf_ast_checkpoint.json"
TENSOR_KEY = "__safetensors__"  # marks a JSON object that stands for a tensor or array in the .safetensors file


def _complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    root = Path(output_dir) / CHECKPOINT_DIR
    found = []
    if root.is_dir():
        for path in root.iterdir():
            info = path / CHECKPOINT_INFO
            if path.is_dir() and not path.name.startswith(TMP_PREFIX) and info.exists():
                found.append((json.loads(info.read_text())["step"], path))
    return sorted(found)


def latest_checkpoint(output_dir) -> Path | None:
    """The most advanced complete checkpoint under `output_dir/checkpoints`, or None."""
    found = _complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def atomic_save_state(accelerator, output_dir, name: str, step: int, total_limit: int | None = None,
                      states: dict | None = None) -> Path:
    """`accelerator.save_state` into a temporary folder, renamed into place when complete.

    A run killed during the save leaves only a `.tmp-*` folder, which resumption ignores, so it
    resumes from the previous complete checkpoint. Old checkpoints beyond `total_limit` (0 or
    None: keep all) are deleted only after the new one is in place (Accelerate's own rotation
    deletes first), and never the new one. `states` maps a file name to an object with
    `state_dict()` (the same on every process; the main process writes it with
    `save_safe_state`): use it instead of `accelerator.register_for_checkpointing`, whose pickle
    files `load_state` unpickles in full.
    """
    if total_limit is not None and total_limit < 0:
        raise ValueError(f"total_limit {total_limit}: pass the number of checkpoints to keep (0 or None keeps all)")
    root = Path(output_dir) / CHECKPOINT_DIR
    final, tmp = root / name, root / f"{TMP_PREFIX}{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for file_name, obj in (states or {}).items():
            save_safe_state(obj.state_dict(), tmp, file_name)
        # Written last: a folder with this file is complete.
        (tmp / CHECKPOINT_INFO).write_text(json.dumps({"step": step, "name": name, "states": sorted(states or {})}))
        if final.exists():  # same name again (e.g. a resumed run re-saving): replace only after writing
            trash = root / f"{TMP_PREFIX}old-{name}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        if total_limit:
            for _, old in _complete_checkpoints(output_dir)[:-total_limit]:
                if old != final:  # a run resumed from an earlier checkpoint writes a lower step than the rest
                    shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path, states: dict | None = None) -> None:
    """Resume from `path`: `accelerator.load_state` with `weights_only` loading, then `states` (see
    `atomic_save_state`) from their JSON and safetensors files.

    Nothing here unpickles arbitrary objects, so a crafted checkpoint folder cannot run code: a
    folder holding Accelerate's `custom_checkpoint_*.pkl` (which `load_state` would unpickle in
    full) is refused, and a file that `weights_only` loading rejects stops the resume. (Accelerate
    skips, and logs, a random-state file it cannot load.)
    """
    path = Path(path)
    pickled = sorted(p.name for p in path.glob("custom_checkpoint_*.pkl"))
    if pickled:
        raise ValueError(
            f"{path} holds {', '.join(pickled)}: state that Accelerate unpickles in full, which runs any code a "
            "crafted file carries, so it is not loaded. Checkpoints written by this version keep that state as "
            "JSON and safetensors; resume from one of those, or start the run again."
        )
    try:
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: a file in this checkpoint holds more than tensors and plain values, and loading it would "
            f"mean unpickling objects that can run code; refusing it ({error})"
        ) from error
    for file_name, obj in (states or {}).items():
        obj.load_state_dict(load_safe_state(path, file_name))


def save_safe_state(state, directory, name: str) -> None:
    """`state` (dicts with str keys, lists, JSON values, tensors, numpy arrays) as `name.json` + `name.safetensors`.

    Loading these runs no code, unlike a pickle. Tuples come back as lists; anything else (a
    function, an object) raises TypeError rather than being pickled.
    """
    tensors = {}

    def encode(value, where):
        if isinstance(value, (torch.Tensor, np.ndarray)):
            key = str(len(tensors))
            tensors[key] = torch.as_tensor(value).detach().cpu().contiguous().clone()  # clone: no shared storage
            return {TENSOR_KEY: key, "numpy": isinstance(value, np.ndarray)}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value) or TENSOR_KEY in value:
                raise TypeError(f"{name}{where}: only str keys (other than {TENSOR_KEY!r}) can be stored")
            return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"{name}{where}: a {type(value).__name__} cannot be stored as JSON or safetensors")

    from safetensors.torch import save_file

    encoded = encode(state, "")
    (Path(directory) / f"{name}.json").write_text(json.dumps(encoded))
    if tensors:
        save_file(tensors, str(Path(directory) / f"{name}.safetensors"))


def load_safe_state(directory, name: str):
    """What `save_safe_state` wrote; numpy arrays come back as numpy arrays, tensors as CPU tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensor_file = Path(directory) / f"{name}.safetensors"
    try:
        tensors = load_file(str(tensor_file)) if tensor_file.exists() else {}
    except SafetensorError as error:
        raise ValueError(f"{tensor_file}: not a safetensors file ({error})") from error

    def decode(value):
        if isinstance(value, dict):
            if TENSOR_KEY in value:
                tensor = tensors[value[TENSOR_KEY]]
                return tensor.numpy() if value.get("numpy") else tensor
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(json.loads((Path(directory) / f"{name}.json").read_text()))


__all__ = ["atomic_save_state", "latest_checkpoint", "load_checkpoint", "load_safe_state", "save_safe_state"]
