"""Run examples/run_audioset.py's `main` once per scenario in this process and record what this process saw.

tests/test_distributed.py launches this file, not the script, so that one 2-process start-up serves
every scenario; the plan is a JSON list of the script's argument lists, or of
`{"argv": [...], "die_after": "step_3"}` for a run that "dies" (raises `Killed` on every rank)
right after writing that checkpoint:

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/distributed_probe.py plan.json

Nothing in the script changes: the probe wraps a few of its names from the outside and, after each
scenario, writes `<output_dir>/probe/rank_<process index>.json` with

- `pid`, `process_index`, `num_processes`, `distributed_type`: who this process was;
- `train_batches`: for every training batch the collator built, the dataset rows (`_index`)
  it was given, their audio paths and `_padding` flags (streaming), how many it skipped
  (`num_bad`) and whether it became the dummy batch;
- `optimizer_steps`: how many times the optimizer really stepped (a post-step hook);
- `ddp_forward_calls`, `input_devices`: forward passes that went through DistributedDataParallel,
  and the devices the model's `input_values` arrived on;
- `eval_rows`, `eval_bad`, `last_eval_scores`: rows of each gathered evaluation, the undecodable
  clips each one counted, and the last one's scores;
- `weights_sha256`: a digest of the final weights (the same on every rank when gradients are synced);
- `error`: the exception `main` raised, if any. It is recorded, not raised, and the next scenario
  starts: safe when every rank raised at the same point (as `--max_bad_fraction` must); a rank
  that raised alone leaves the other waiting, and the test's launch timeout ends it.
"""

import hashlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path

import torch
from accelerate import PartialState
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import register_optimizer_step_post_hook

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "run_audioset.py"


def load_script():
    spec = importlib.util.spec_from_file_location("run_audioset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Killed(Exception):
    """A run "dying" right after a checkpoint (an Exception, so the next scenario still starts)."""


def run(script, argv: list[str], die_after: str | None = None) -> dict:
    """`script.main(argv)` with the probes in place; the record of what this process saw."""
    record = {"argv": argv, "pid": os.getpid(), "train_batches": [], "optimizer_steps": 0, "ddp_forward_calls": 0,
              "input_devices": [], "eval_rows": [], "eval_bad": [], "last_eval_scores": None, "error": None}
    built = {}
    originals = (script.AudioCollator, script.build_model, script.predict, DistributedDataParallel.forward,
                 script.atomic_save_state)

    class RecordingCollator(originals[0]):
        def __call__(self, rows):
            batch = super().__call__(rows)
            if self.train:
                record["train_batches"].append({
                    "rows": [row["_index"] for row in rows], "num_bad": batch["num_bad"],
                    "dummy": not bool(batch["valid"].any()), "padding": [bool(row.get("_padding")) for row in rows],
                    "paths": [row[self.audio_column].get("path") for row in rows],
                })
            return batch

    def recording_build_model(*args, **kwargs):
        model = built["model"] = originals[1](*args, **kwargs)

        def note_device(module, args, kwargs):
            device = str(kwargs["input_values"].device)
            if device not in record["input_devices"]:
                record["input_devices"].append(device)

        model.register_forward_pre_hook(note_device, with_kwargs=True)
        return model

    def recording_predict(*args, **kwargs):
        scores, targets, num_bad = originals[2](*args, **kwargs)
        record["eval_rows"].append(len(scores))
        record["eval_bad"].append(num_bad)
        record["last_eval_scores"] = scores.tolist()
        return scores, targets, num_bad

    def counting_ddp_forward(self, *args, **kwargs):
        record["ddp_forward_calls"] += 1
        return originals[3](self, *args, **kwargs)

    def count_step(optimizer, args, kwargs):
        record["optimizer_steps"] += 1

    def save_then_maybe_die(accelerator, output_dir, name, *args, **kwargs):
        path = originals[4](accelerator, output_dir, name, *args, **kwargs)
        if name == die_after:  # every rank is past the save's last barrier: all of them raise here
            raise Killed(f"died after writing {name}")
        return path

    script.AudioCollator, script.build_model = RecordingCollator, recording_build_model
    script.predict, script.atomic_save_state = recording_predict, save_then_maybe_die
    DistributedDataParallel.forward = counting_ddp_forward
    hook = register_optimizer_step_post_hook(count_step)
    try:
        script.main(argv)
    except Exception as error:  # recorded; the next run still starts (every rank raised at the same point)
        record["error"] = "".join(traceback.format_exception_only(error)).strip()
    finally:
        (script.AudioCollator, script.build_model, script.predict, DistributedDataParallel.forward,
         script.atomic_save_state) = originals
        hook.remove()
    state = PartialState()
    record.update(process_index=state.process_index, num_processes=state.num_processes,
                  distributed_type=str(state.distributed_type))
    if "model" in built:
        record["weights_sha256"] = weights_digest(built["model"])
    return record


def main(plan_path: str) -> None:
    """Run every entry of the plan (a JSON list of the script's argument lists) in turn, in this one launch."""
    script = load_script()
    for entry in json.loads(Path(plan_path).read_text()):
        argv, die_after = (entry["argv"], entry["die_after"]) if isinstance(entry, dict) else (entry, None)
        record = run(script, argv, die_after)
        probe_dir = Path(script.parse_args(argv).output_dir) / "probe"
        probe_dir.mkdir(parents=True, exist_ok=True)
        (probe_dir / f"rank_{record['process_index']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
