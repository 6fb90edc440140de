"""Time and peak memory of the CKD relation losses (WR / LTR, pair- and triple-wise), forward + backward.

Setting: a teacher with 6 layers and a student with 3 layers, both of width D, matched uniformly
(teacher {emb,2,4,6} -> student {emb,1,2,3}, M = 4 matched layers); random hidden states, the student's
as leaf tensors that need gradients; attention mask with 1/4 of the batch padded to half length.
Only the loss is measured (no model).

* time: median over ``--repeats`` runs of loss forward + backward, after one warm-up run.
* peak memory: bytes allocated by torch's allocator during one forward + backward, above what was
  allocated before (inputs excluded). On GPU: ``torch.cuda.max_memory_allocated`` minus the allocated
  bytes before the run. On CPU: ``torch.profiler.profile(profile_memory=True)`` records every CPU
  allocation and free with the allocator's running total ("Total Allocated", counted from the start of
  profiling); the peak is the maximum of that running total. Blocks that existed before (the inputs,
  the previous step's gradients, which ``step`` releases first) are not counted, so the number is the
  storage the loss's forward + backward allocates, the student's new gradients included. It counts
  tensor storage only (not the Python heap or the malloc arena's slack) and is measured in a separate
  run from the timing.

Run (CPU, shared machine):
    flock /tmp/raykd-heavy.lock env OMP_NUM_THREADS=2 python benchmarks/ckd_losses.py
Writes benchmarks/out/ckd_losses.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from raykd.losses import build_one

N_TEACHER, N_STUDENT = 6, 3

# (label, registered name, params, batch: "full" = the size's B, "small" = its smaller B, "both")
LOSSES = [
    ("WR pair, cosine+KL", "wr_pair", {"form": "cosine_kl"}, "full"),
    ("WR pair, distance+Huber", "wr_pair", {"form": "distance"}, "full"),
    ("WR triple, window 21", "wr_triple", {"window": 21}, "full"),
    ("WR triple, full, chunked", "wr_triple", {"window": None}, "both"),
    ("WR triple, full, unchunked", "wr_triple", {"window": None, "anchor_chunk": 10**9}, "small"),
    ("LTR pair, cosine+KL", "ltr_pair", {"form": "cosine_kl"}, "full"),
    ("LTR pair, distance+Huber", "ltr_pair", {"form": "distance"}, "full"),
    ("LTR triple", "ltr_triple", {}, "full"),
]

# (B, L, D, smaller B): the unchunked full-triple form runs at the smaller B (at B=32, L=128 it would keep
# several B*L^3 float32 tensors of 268 MB per matched layer, too much for a shared 24 GiB machine)
SIZES = [(32, 128, 768, 8), (32, 64, 384, 32)]


def make_inputs(B: int, L: int, D: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hs = tuple(torch.randn(B, L, D, generator=g).to(device).requires_grad_(True) for _ in range(N_STUDENT + 1))
    ht = tuple(torch.randn(B, L, D, generator=g).to(device) for _ in range(N_TEACHER + 1))
    mask = torch.ones(B, L, device=device)
    mask[: B // 4, L // 2 :] = 0
    return {"hidden_states": hs}, {"hidden_states": ht}, {"attention_mask": mask}


def step(loss, student_out, teacher_out, batch) -> float:
    for h in student_out["hidden_states"]:
        h.grad = None
    v = loss(student_out, teacher_out, batch)
    v.backward()
    return float(v.detach())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_bytes(loss, inputs, device: torch.device) -> int:
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(loss, *inputs)
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(loss, *inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        events = json.load(open(path))["traceEvents"]
    mem = [e["args"] for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    if not mem:
        return 0
    # The running total is process-wide and keeps blocks freed outside an earlier profiling session,
    # so measure from its value just before this session's first event.
    baseline = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return max(0, max(m["Total Allocated"] for m in mem) - baseline)


def bench(name: str, params: dict, B: int, L: int, D: int, device: torch.device, repeats: int) -> dict:
    loss = build_one(name, dict(params))
    inputs = make_inputs(B, L, D, device)
    value = step(loss, *inputs)  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step(loss, *inputs)
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = peak_bytes(loss, inputs, device)
    return {"loss": name, "params": params, "B": B, "L": L, "D": D, "M": N_STUDENT + 1, "value": value, "time_s": statistics.median(times), "times_s": times, "peak_bytes": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "ckd_losses.json"))
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    sizes = [(4, 16, 32, 4)] if args.quick else SIZES

    rows = []
    for B, L, D, B_unchunked in sizes:
        for label, name, params, which in LOSSES:
            batches = {"full": [B], "small": [B_unchunked], "both": sorted({B, B_unchunked}, reverse=True)}[which]
            for b in batches:
                r = bench(name, params, b, L, D, device, args.repeats)
                r["label"] = label
                rows.append(r)
                print(f"  {label:28s} B={b:3d} L={L:4d} D={D:4d}  {r['time_s'] * 1e3:9.1f} ms  {r['peak_bytes'] / 2**20:9.1f} MiB", flush=True)

    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, torch threads={torch.get_num_threads()})"
    memory_how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler CPU allocator peak (Total Allocated)"
    print(f"\ndevice: {dev}; teacher {N_TEACHER} layers, student {N_STUDENT} layers, M = {N_STUDENT + 1} matched layers; "
          f"forward+backward, median of {args.repeats}; peak memory: {memory_how}, inputs excluded\n")
    print("| loss | B | L | D | time fwd+bwd (ms) | peak memory (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['B']} | {r['L']} | {r['D']} | {r['time_s'] * 1e3:.1f} | {r['peak_bytes'] / 2**20:.1f} |")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": dev, "memory": memory_how, "torch": torch.__version__, "teacher_layers": N_TEACHER, "student_layers": N_STUDENT, "repeats": args.repeats, "rows": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
