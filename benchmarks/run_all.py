"""Run every benchmark, then write one Markdown table of all rows (results_<device>.md) and their JSON.

    python benchmarks/run_all.py            # the full suite: about 10-14 minutes on 2 CPU cores
    python benchmarks/run_all.py --quick    # a smoke run with fewer repetitions
    python benchmarks/run_all.py --device cuda --only inference,features
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/run_all.py --quick --only inference --section "AVX2 (capped)"

Each script runs in its own process (bench_memory starts one more per model), writes
benchmarks/results/<script>.<device>.json, and prints its own table as it goes. With `--section`
the run becomes a `## <section>` of the results file (replacing one of that title) and the rest
of the file stays; a run without it rewrites the main table and keeps the sections.
"""

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from common import isa_line

HERE = Path(__file__).resolve().parent
SCRIPTS = ["inference", "features", "low_precision", "long_audio", "export", "training", "memory"]


def markdown(results: list[dict], device: str, seconds: float, note: str | None = None,
             section: str | None = None) -> str:
    machine = next((r["machine"] for r in results if r.get("machine")), {})
    peaks = next((r["peaks"] for r in results if r.get("peaks")), {})
    lines = [
        f"## {section}" if section else f"# hf-ast benchmark results ({device})",
        "",
        f"Machine: {machine.get('cpu')} ({machine.get('cpus')} CPUs, {machine.get('threads')} torch threads, "
        f"ISA {', '.join(machine.get('isa', []))}), torch {machine.get('torch')}, transformers "
        f"{machine.get('transformers')}, Python {machine.get('python')}"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else "") + ".",
        "",
        isa_line(machine.get("isa_caps")) + ".",
        "",
    ]
    if peaks:
        lines.append("Measured matmul peaks (2048^3): " + ", ".join(
            f"{k} {v['gflops']:.0f} GFLOP/s ({v['uncontended']}/{v['repeats']} uncontended"
            + ("".join(f"; {name} {g:.0f}" for name, g in v["by_kernel"].items()) if len(v.get("by_kernel", {})) > 1
               else "") + ")"
            for k, v in peaks.items()
        ) + ".")
        lines.append("")
    if any(result.get("args", {}).get("cpu_time") for result in results):
        timing = ("Times are medians of process CPU time on one thread (`--threads 1 --cpu-time`), not wall time: "
                  "on a shared host that leaves out the time other work takes, so every repetition counts (`unc`).")
    else:
        timing = ("Times are medians over uncontended repetitions only (process CPU time / wall time >= 0.9 x "
                  "threads); `unc` is how many of the repetitions that was. Rows marked *contended* had none: their "
                  "median is over all repetitions and is not trustworthy.")
    lines += [
        timing + " Speed-ups are ratios within the same run (candidates alternated A B, B A, ...).",
        "",
    ]
    if seconds:
        lines += [f"Suite wall time: {seconds / 60:.1f} min.", ""]
    if note:
        lines += [note, ""]
    lines += [
        "| script | group | candidate | median | unc | GFLOP/s | % fp32 peak | % bf16 peak | speed-up | vs | extra |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    skip = {"group", "name", "median_s", "min_s", "uncontended", "repeats", "cpu_per_wall", "contended", "gflop",
            "gflops", "of_fp32_peak", "of_bf16_peak", "speedup", "baseline"}
    for result in results:
        for row in result["rows"]:
            extra = ", ".join(
                f"{k}={v:.0f}" if isinstance(v, float) and abs(v) >= 100 else f"{k}={v:.3g}" if isinstance(v, float)
                else f"{k}={v}" for k, v in row.items() if k not in skip
            )
            median = row["median_s"]
            median_text = "" if median != median else f"{median * 1000:.1f} ms" if median < 10 else f"{median:.2f} s"
            lines.append(
                f"| {result['script'].removeprefix('bench_')} | {row['group']} | {row['name']} | {median_text}"
                f"{' *contended*' if row.get('contended') else ''} | {row['uncontended']}/{row['repeats']} | "
                + (f"{row['gflops']:.0f} | {row['of_fp32_peak'] * 100:.0f}% | "
                   + (f"{row['of_bf16_peak'] * 100:.0f}% | " if "of_bf16_peak" in row else " | ")
                   if "gflops" in row and "of_fp32_peak" in row else " | | | ")
                + (f"{row['speedup']:.2f}x | {row['baseline']} | " if "speedup" in row else " | | ")
                + f"{extra} |"
            )
    notes = list(dict.fromkeys(note for result in results for note in result.get("notes", [])))  # once each
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def split_sections(text: str) -> tuple[str, dict]:
    """A results file's main part and its `## ` sections (title -> text), in file order."""
    main, *parts = re.split(r"(?m)^(?=## )", text)
    return main, {part.splitlines()[0][3:].strip(): part for part in parts}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SCRIPTS)}")
    parser.add_argument("--output", default=None, help="Markdown file (default: benchmarks/results_<device>.md)")
    parser.add_argument("--note", default=None, help="a sentence for the results file (e.g. that the host was shared)")
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild the Markdown from existing results/*.json without running anything")
    parser.add_argument("--section", default=None,
                        help='write this run as a "## SECTION" of the results file, keeping the rest of it '
                             '(e.g. "AVX2 (capped)" for a run under ONEDNN_MAX_CPU_ISA=AVX2)')
    args = parser.parse_args(argv)
    scripts = args.only.split(",") if args.only else SCRIPTS
    start = time.perf_counter()
    results, failed = [], []
    device = args.device.split(":")[0]
    # A section's per-script JSON sits beside the main run's, e.g. bench_inference.cpu.avx2-capped.json.
    slug = "." + re.sub(r"[^a-z0-9]+", "-", args.section.lower()).strip("-") if args.section else ""
    if args.render_only:
        results = [json.loads(path.read_text()) for name in scripts
                   if (path := HERE / "results" / f"bench_{name}.{device}{slug}.json").exists()]
        scripts = []
    for name in scripts:
        json_path = HERE / "results" / f"bench_{name}.{device}{slug}.json"
        command = [sys.executable, str(HERE / f"bench_{name}.py"), "--device", args.device, "--json", str(json_path)]
        if args.quick:
            command.append("--quick")
        print(f"\n### {' '.join(command[1:])}", flush=True)
        began = time.perf_counter()
        if subprocess.run(command, cwd=HERE.parent).returncode != 0:
            failed.append(name)
            continue
        print(f"### bench_{name}: {time.perf_counter() - began:.0f} s", flush=True)
        results.append(json.loads(json_path.read_text()))
    seconds = 0.0 if args.render_only else time.perf_counter() - start
    output = Path(args.output or HERE / f"results_{device}.md")
    main_part, sections = split_sections(output.read_text() if output.exists() else "")
    text = markdown(results, device, seconds, args.note, section=args.section)
    if args.section:
        sections[args.section] = text
        main_part = main_part or f"# hf-ast benchmark results ({device})\n"
    else:
        main_part = text
    output.write_text("\n".join(part.rstrip("\n") + "\n" for part in [main_part, *sections.values()]))
    json_output = output.with_name(output.stem + slug.replace(".", "_") + ".json")
    json_output.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {output} and {json_output} ({seconds / 60:.1f} min)")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
