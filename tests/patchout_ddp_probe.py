"""Two CPU processes (gloo) train a tiny AST one step under DistributedDataParallel with patchout.

tests/test_patchout.py runs this file; each rank seeds torch as Accelerate's `set_seed` does (the
same seed everywhere), seeds its patchout draws as the script does, and writes to
`<out>/rank_<r>.json` the patches its step kept (read off the zeros of the last hidden state)
and a digest of its gradients after the all-reduce.

    python tests/patchout_ddp_probe.py OUT_DIR
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

SEED = 7


def worker(rank: int, out: str, init_file: str):
    from accelerate.utils import set_seed

    from hf_ast import HfAstConfig, HfAstForAudioClassification
    from hf_ast.training.loop import patchout_seed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    set_seed(SEED)  # the same global seed on every process, as the script does
    config = HfAstConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         max_length=128, num_labels=3, patchout_time=6, patchout_freq=4)
    model = HfAstForAudioClassification(config).train()
    model.audio_spectrogram_transformer.patchout_generator = torch.Generator().manual_seed(
        patchout_seed(SEED, rank, epoch=0, batch=0))  # as the script seeds each batch
    ddp = DistributedDataParallel(model)
    x = torch.randn(2, 128, 128)
    output = ddp(x, labels=torch.tensor([0, 2]), output_hidden_states=True)
    output.loss.backward()
    kept = (output.hidden_states[-1].abs().sum(-1) != 0).tolist()  # (B, 2 + f*t)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    Path(out, f"rank_{rank}.json").write_text(json.dumps(
        {"kept": kept, "grad_sha256": hashlib.sha256(grads.numpy().tobytes()).hexdigest()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    mp.spawn(worker, args=(out, str(Path(out, "init").resolve())), nprocs=2, join=True)
