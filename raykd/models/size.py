"""Size accounting: parameters, bytes (fp32 and fp16), MACs per example, CPU latency per example."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_bytes(model: nn.Module, dtype_bytes: int = 4) -> int:
    """Bytes to store the parameters and buffers at ``dtype_bytes`` per float (4: fp32, 2: fp16)."""
    floats = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers() if b.is_floating_point())
    ints = sum(b.numel() * b.element_size() for b in model.buffers() if not b.is_floating_point())
    return floats * dtype_bytes + ints


@torch.no_grad()
def macs_per_example(model: nn.Module, example: torch.Tensor | dict) -> int:
    """Multiply-accumulates for one example, counted by ``torch.utils.flop_counter`` (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(**example) if isinstance(example, dict) else model(example)
    model.train(was_training)
    batch = next(iter(example.values())).shape[0] if isinstance(example, dict) else example.shape[0]
    return int(counter.get_total_flops() // 2 // batch)


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, example: torch.Tensor | dict, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds per example on the CPU (batch of 1, eval mode)."""
    model = model.eval()
    call = (lambda: model(**example)) if isinstance(example, dict) else (lambda: model(example))
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def size_report(model: nn.Module, example: torch.Tensor | dict, latency: bool = True) -> dict:
    out = {"params": count_params(model), "bytes": model_bytes(model, 4), "bytes_fp16": model_bytes(model, 2),
           "macs": macs_per_example(model, example)}
    if latency:
        out["latency_ms"] = cpu_latency_ms(model, example)
    return out


def param_count_on_meta(name: str, args: dict, num_classes: int | None = None) -> int | None:
    """Parameter count of a registered model built on the ``meta`` device (no memory, no weights).

    Returns None when the model cannot be built this way."""
    from raykd.registry import meta_model

    try:
        return count_params(meta_model(name, args, num_classes))
    except Exception:  # noqa: BLE001 - size check is best-effort; the run itself reports real errors
        return None
