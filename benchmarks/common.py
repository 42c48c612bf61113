"""Timing harness shared by the benchmark scripts (not a test: nothing here asserts a speed).

- `compare(candidates, ...)` runs each candidate once or more to warm up, then alternates them
  (A B, then B A, ...) for `repeats` rounds, so slow drifts of the machine hit both sides alike.
- Every repetition records wall time (`time.perf_counter`) and process CPU time
  (`time.process_time`). On a CPU run with N threads an uncontended repetition keeps all N busy,
  so CPU/wall is close to N; the host of the 2-core machines this was written on sometimes
  takes a core away for seconds to minutes, which shows as CPU/wall near 1. Only repetitions with
  CPU/wall >= `0.9 * threads` count ("uncontended"); medians are over those, and the count is
  reported with every figure. When none is uncontended the figure is the median of all
  repetitions and is flagged `contended`.
- `matmul_peak(dtype)` measures the GFLOP/s of a large square matmul, the ceiling each row is
  compared with; `ast_forward_flops(config, ...)` counts the FLOPs of an AST forward from the
  config (matmuls only: 2 FLOPs per multiply-add).
- `isa_info()` says which instruction sets the kernels may use: the CPU's flags, and the caps in
  force (`ONEDNN_MAX_CPU_ISA`, `MKL_ENABLE_INSTRUCTIONS`); every table header and results file
  carries it, since hf-ast's fp32 and bf16 speed-ups depend on it.
- `Report` collects rows, prints a table and writes JSON.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# An uncontended repetition keeps at least this fraction of the threads busy (2 threads: >= 1.8).
UNCONTENDED_FRACTION = 0.9


# ---------------------------------------------------------------------------------------------
# Command line and machine
# ---------------------------------------------------------------------------------------------


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU rows time with torch.cuda.synchronize)")
    parser.add_argument("--repeats", type=int, default=None, help="alternated repetitions per candidate")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per candidate before timing")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write results here (default: benchmarks/results/<script>.json)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time repetitions by process CPU time, not wall time (needs --threads 1): on a busy "
                             "host one thread's CPU time leaves out the time others take, which wall time counts")
    return parser


# Set by setup(--cpu-time): time_once reports process CPU time as the repetition's time.
CPU_TIME = False


def setup(args) -> torch.device:
    global CPU_TIME
    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "cpu_time", False):
        if args.threads != 1 or args.device != "cpu":
            # With N threads CPU time also counts the spin-waits of threads whose peers the host descheduled.
            raise SystemExit("--cpu-time times one CPU thread: pass --threads 1 (and --device cpu).")
        CPU_TIME = True
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device on this machine.")
    return device


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", info["cpu"]).strip()
        info["cpus"] = fields.get("CPU(s)", "").strip()
        flags = fields.get("Flags", "").split()
        info["isa"] = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni")
                       if flag in flags]
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["isa_caps"] = isa_info()
    return info


# CPU flags that decide which kernels run: AVX-512 (oneDNN's fast fp32 and any bf16 matmul), VNNI
# (exact int8 matmuls), native bf16 and AMX.
ISA_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def isa_info() -> dict:
    """The instruction sets this process's kernels may use: CPU flags, the caps in force, and what oneDNN accepts.

    `ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` make an AVX-512 machine run the kernels an
    AVX2-only CPU runs (both libraries read them once, at start). ATen's capability does not see
    either cap; hf-ast's probes of oneDNN (`hf_ast.modeling_hf_ast`) do.
    """
    flags = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(next((line for line in cpuinfo if line.startswith("flags")), ":").split(":", 1)[1].split())
    except OSError:  # not Linux: lscpu's flags in machine_info() may still have them
        pass
    from hf_ast.modeling_hf_ast import _onednn_has_avx512, _onednn_runs

    return {
        "cpu_flags": [flag for flag in ISA_FLAGS if flag in flags],
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
        "MKL_ENABLE_INSTRUCTIONS": os.environ.get("MKL_ENABLE_INSTRUCTIONS"),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_avx512": _onednn_has_avx512(),
        "onednn_bf16_matmul": _onednn_runs(torch.bfloat16, "none"),
    }


def isa_line(isa: dict) -> str:
    """One line for table headers: `ISA: CPU avx2, avx512f, ...; caps ONEDNN_MAX_CPU_ISA=AVX2, ...; ...`."""
    if not isa:
        return "ISA: not recorded"
    caps = [f"{name}={isa[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if isa.get(name)]
    return (f"ISA: CPU {', '.join(isa['cpu_flags']) or 'flags unknown'}; caps {', '.join(caps) or 'none'}; "
            f"ATen {isa['aten_capability']}; oneDNN AVX-512 {'yes' if isa['onednn_avx512'] else 'no'}, "
            f"bf16 matmul {'yes' if isa['onednn_bf16_matmul'] else 'no'}")


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Repetitions of one candidate: wall seconds and process CPU seconds per repetition."""

    name: str
    wall: list = field(default_factory=list)
    cpu: list = field(default_factory=list)
    threads: int = 1
    device_type: str = "cpu"

    @property
    def uncontended(self) -> list:
        if self.device_type != "cpu":  # a GPU run waits on the device; CPU/wall says nothing
            return list(self.wall)
        need = UNCONTENDED_FRACTION * self.threads
        return [w for w, c in zip(self.wall, self.cpu) if c / w >= need]

    @property
    def contended(self) -> bool:
        return not self.uncontended

    @property
    def median(self) -> float:
        return statistics.median(self.uncontended or self.wall)

    def summary(self) -> dict:
        kept = self.uncontended
        return {
            "median_s": self.median,
            "min_s": min(kept or self.wall),
            "uncontended": len(kept),
            "repeats": len(self.wall),
            "cpu_per_wall": [round(c / w, 2) for w, c in zip(self.wall, self.cpu)],
            "contended": self.contended,
        }


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device: torch.device) -> tuple[float, float]:
    _sync(device)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    _sync(device)
    cpu = time.process_time() - cpu0
    return (cpu if CPU_TIME else time.perf_counter() - wall0), cpu


CPU = torch.device("cpu")


def compare(candidates: dict, repeats: int, warmup: int = 1, device: torch.device = CPU,
            min_uncontended: int = 0, max_extra: int = 0) -> dict:
    """Time `{name: fn}` alternately; returns `{name: Timing}`.

    Round r runs the candidates in order when r is even and reversed when odd (A B, B A, ...).
    With `min_uncontended`, up to `max_extra` further rounds run while any candidate has fewer
    uncontended repetitions than that (the host's contention comes and goes).
    """
    names = list(candidates)
    threads = torch.get_num_threads()
    timings = {name: Timing(name, threads=threads, device_type=device.type) for name in names}
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    rounds = 0
    while True:
        order = names if rounds % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu = time_once(candidates[name], device)
            timings[name].wall.append(wall)
            timings[name].cpu.append(cpu)
        rounds += 1
        if rounds < repeats:
            continue
        short = any(len(t.uncontended) < min_uncontended for t in timings.values())
        if not short or rounds >= repeats + max_extra:
            break
    return timings


# ---------------------------------------------------------------------------------------------
# Hardware ceiling and FLOP counts
# ---------------------------------------------------------------------------------------------


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of a `(size x size) @ (size x size)` matmul in `dtype`: the ceiling rows are compared with.

    On the CPU, fp32 `torch.mm` runs MKL's sgemm, which on AMD hosts is well below the hardware;
    oneDNN's matmul (what hf-ast's fp32 inference uses) is timed too and the faster one is the peak.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    inner = 4 if device.type == "cpu" else 50  # one rep ~0.2-0.4 s on 2 CPU cores
    from hf_ast.modeling_hf_ast import _onednn_linear_op, _onednn_runs  # the model's own probe of the op

    kernels = {"mm": lambda: torch.mm(a, b)}
    if device.type == "cpu" and dtype == torch.float32 and _onednn_runs(dtype, "none"):
        onednn = _onednn_linear_op()
        kernels["onednn"] = lambda: onednn(a, b, None, "none", [], "")  # a @ b.T, same FLOPs

    def repeat(kernel):
        def run():
            for _ in range(inner):
                kernel()
        return run

    timings = compare({name: repeat(kernel) for name, kernel in kernels.items()}, repeats=repeats, warmup=1,
                      device=device, min_uncontended=3, max_extra=repeats)
    flops = 2 * size**3 * inner
    by_kernel = {name: flops / min(t.uncontended or t.wall) / 1e9 for name, t in timings.items()}
    best = max(by_kernel, key=by_kernel.get)
    return {"dtype": str(dtype).replace("torch.", ""), "size": size, "gflops": by_kernel[best], "kernel": best,
            "by_kernel": by_kernel, "uncontended": len(timings[best].uncontended), "repeats": len(timings[best].wall)}


def ast_forward_flops(config, batch_size: int, num_frames: int | None = None, num_tokens: int | None = None) -> float:
    """FLOPs of one AST forward (matmuls, 2 per multiply-add), computed from the config.

    Per layer and clip with L tokens, width C, MLP width I: q, k, v and output projections
    4 * 2LC^2, MLP 2 * 2LCI, attention scores QK^T and the weighted sum 2 * 2L^2C. Patch embedding
    2 * P * C * patch_size^2 for P patches; the head is negligible. The paper's geometry
    (L = 1214, C = 768, I = 3072, 12 layers) gives about 261 GFLOP per 10 s clip.
    """
    from hf_ast import patch_grid

    if num_tokens is None:
        frames = num_frames or config.max_length
        f, t = patch_grid(config.num_mel_bins, frames, config.patch_size, config.frequency_stride, config.time_stride)
        num_tokens = 2 + f * t
    patches = num_tokens - 2
    c, i, length = config.hidden_size, config.intermediate_size, num_tokens
    per_layer = 4 * 2 * length * c * c + 2 * 2 * length * c * i + 2 * 2 * length * length * c
    embed = 2 * patches * c * config.patch_size**2
    head = 2 * c * config.num_labels
    return batch_size * (config.num_hidden_layers * per_layer + embed + head)


# ---------------------------------------------------------------------------------------------
# Models with identical weights
# ---------------------------------------------------------------------------------------------


def base_config(**overrides):
    """The paper's AudioSet geometry and width (86.6 M parameters), 527 labels, as transformers' defaults."""
    from hf_ast import HfAstConfig

    return HfAstConfig(**{"num_labels": 527, **overrides})


@torch.no_grad()
def twin_models(config, seed: int = 0, attn_implementation: str = "sdpa", std: float = 0.02):
    """(hf-ast, transformers) classifiers with the same random weights, in eval mode.

    hf-ast saves transformers' released parameter names, so transformers loads the same file; all
    tensors (also those initialised to zeros/ones) are random.
    """
    from transformers import ASTConfig, ASTForAudioClassification
    from transformers.utils import logging as transformers_logging

    from hf_ast import HfAstForAudioClassification

    transformers_logging.disable_progress_bar()

    fields = {k: getattr(config, k) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "layer_norm_eps", "patch_size", "qkv_bias", "frequency_stride", "time_stride", "max_length", "num_mel_bins",
    )}
    ours = HfAstForAudioClassification._from_config(config, attn_implementation=attn_implementation)
    generator = torch.Generator().manual_seed(seed)
    for parameter in ours.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    for module in ours.modules():  # LayerNorm scales near 1, as trained models have
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.add_(1.0)
    # transformers 5.2x renames the layers in memory (q_proj, mlp.fc1, ...) and converts the
    # released names when loading, so the weights travel through a saved checkpoint.
    with tempfile.TemporaryDirectory() as directory:
        ours.save_pretrained(directory)
        theirs = ASTForAudioClassification.from_pretrained(
            directory, config=ASTConfig(**fields, num_labels=config.num_labels),
            attn_implementation=attn_implementation,
        )
    return ours.eval(), theirs.eval()


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


class Report:
    """Rows of one benchmark script: printed as a table and written as JSON with the machine and peaks."""

    def __init__(self, script: str, args, device: torch.device):
        self.script = script
        self.args = args
        self.device = device
        self.rows = []
        self.notes = []
        self.peaks = {}
        self.machine = machine_info(device)
        print(isa_line(self.machine["isa_caps"]), flush=True)

    def measure_peaks(self, quick: bool = False):
        repeats = 3 if quick else 5
        from hf_ast.modeling_hf_ast import _onednn_runs

        self.peaks["fp32"] = matmul_peak(torch.float32, self.device, repeats=repeats)
        line = (f"matmul peak: fp32 {self.peaks['fp32']['gflops']:.0f} GFLOP/s ({self.peaks['fp32']['kernel']}; "
                + ", ".join(f"{k} {v:.0f}" for k, v in self.peaks["fp32"]["by_kernel"].items()) + ") "
                f"({self.peaks['fp32']['uncontended']}/{self.peaks['fp32']['repeats']} uncontended)")
        if self.device.type == "cpu" and not _onednn_runs(torch.bfloat16, "none"):
            # Without AVX-512 oneDNN has no bf16 matmul and torch's fallback takes minutes at 2048^3;
            # hf-ast's bf16 Linear layers compute in fp32 there, so fp32's peak is their ceiling too.
            self.note("no bf16 matmul kernel here (oneDNN has none without AVX-512): no bf16 peak measured")
        else:
            self.peaks["bf16"] = matmul_peak(torch.bfloat16, self.device, repeats=repeats)
            line += (f", bf16 {self.peaks['bf16']['gflops']:.0f} GFLOP/s "
                     f"({self.peaks['bf16']['uncontended']}/{self.peaks['bf16']['repeats']} uncontended)")
        print(line, flush=True)

    def add(self, group: str, name: str, timing: Timing, flops: float | None = None, baseline: Timing | None = None,
            **extra) -> dict:
        row = {"group": group, "name": name, **timing.summary()}
        if flops:
            gflops = flops / timing.median / 1e9
            row["gflop"] = flops / 1e9
            row["gflops"] = gflops
            for key, peak in self.peaks.items():
                row[f"of_{key}_peak"] = gflops / peak["gflops"]
        if baseline is not None:
            row["speedup"] = baseline.median / timing.median
            row["baseline"] = baseline.name
        row.update(extra)
        self.rows.append(row)
        print(self.format_row(row), flush=True)
        return row

    def note(self, text: str):
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    @staticmethod
    def format_row(row: dict) -> str:
        parts = [f"{row['group']:<18} {row['name']:<34} {row['median_s'] * 1000:9.1f} ms"]
        parts.append(f"{row['uncontended']:>2}/{row['repeats']:<2} unc")
        if "gflops" in row:
            parts.append(f"{row['gflops']:6.0f} GFLOP/s")
            parts.append(" ".join(f"{row[k] * 100:4.0f}% {k[3:-5]}" for k in row if k.startswith("of_")))
        if "speedup" in row:
            parts.append(f"x{row['speedup']:.2f} vs {row['baseline']}")
        for key in ("max_abs_diff", "top1_agreement", "map_drop"):
            if key in row:
                parts.append(f"{key}={row[key]:.3g}")
        if row.get("contended"):
            parts.append("CONTENDED")
        return "  ".join(parts)

    def print_table(self):
        print()
        print(f"== {self.script} on {self.machine.get('cpu')} ({self.machine.get('threads')} threads, "
              f"torch {self.machine.get('torch')}, device {self.device}) ==")
        print(f"== {isa_line(self.machine.get('isa_caps'))} ==")
        for row in self.rows:
            print(self.format_row(row))
        for text in self.notes:
            print(f"note: {text}")

    def write(self, path: str | None = None) -> Path:
        path = Path(path or ROOT / "benchmarks" / "results" / f"{self.script}.{self.device.type}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "script": self.script,
            "args": {k: v for k, v in vars(self.args).items()},
            "machine": self.machine,
            "peaks": self.peaks,
            "rows": self.rows,
            "notes": self.notes,
            "uncontended_rule": "all (times are CPU time of one thread, --cpu-time)" if CPU_TIME
            else f"CPU time / wall time >= {UNCONTENDED_FRACTION} x threads",
        }
        path.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {path}")
        return path
