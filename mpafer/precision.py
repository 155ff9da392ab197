"""Mixed precision in one place, for training, evaluation and benchmarks.

``precision``: "bf16" (autocast to bfloat16: GPUs, and CPUs with AVX-512-BF16 or AMX, where it
trains the default model 1.3-3x faster than float32), "fp32", or "auto" (bf16 on CUDA, float32
on a CPU, the safe choice on an unknown machine). On a CPU the attention kernel is pinned to
the plain-math one: at ~150 tokens the flash kernel's bf16 backward was most of a training step
when profiled on the 2-core development machine.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

PRECISIONS = ("auto", "bf16", "fp32")


def uses_bf16(device: torch.device | str, precision: str = "auto") -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    return precision == "bf16" or (precision == "auto" and kind == "cuda")


@contextmanager
def autocast(device: torch.device | str, precision: str = "auto") -> Iterator[None]:
    kind = torch.device(device).type
    with ExitStack() as stack:
        if uses_bf16(device, precision):
            stack.enter_context(torch.autocast(kind, dtype=torch.bfloat16))
        if kind == "cpu":
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        yield
