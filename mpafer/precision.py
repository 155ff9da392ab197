"""Mixed precision in one place, for training, evaluation and benchmarks.

``precision``: "bf16" (autocast to bfloat16: GPUs, and CPUs with AVX-512-BF16 or AMX, where it
trains the default model 1.3-3x faster than float32), "fp32", or "auto" (bf16 on CUDA, float32
on a CPU, the safe choice on an unknown machine; for prediction see ``inference_precision``).
"bf16" falls back to float32, with a warning, where the hardware has no native bfloat16: on an
AVX2-only CPU autocast emulates it, and a stage-0 step took 25 s instead of 1.7 s in float32 (2-core
AMD EPYC without AVX-512).
On a CPU the attention kernel is pinned to the plain-math one: at ~150 tokens the flash kernel's
bf16 backward was most of a training step when profiled on the 2-core development machine. (Under bf16
the image tower's blocks skip SDPA altogether: ``mpafer.cpu_attention``.)
"""
from __future__ import annotations

import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from functools import lru_cache
from typing import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively (not emulated, which is many times slower)."""
    return _native_bf16(torch.device(device).type)


@lru_cache(maxsize=None)  # autocast asks once per training step; the hardware does not change
def _native_bf16(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def cpu_bf16_autocast() -> bool:
    """Whether the code running now is under bf16 autocast on the CPU."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def effective_precision(device: torch.device | str, precision: str = "auto", *, _stacklevel: int = 2) -> str:
    """What ``precision`` means on ``device``: "bf16" or "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    wanted = precision == "bf16" or (precision == "auto" and kind == "cuda")
    if wanted and not native_bf16(device):
        warnings.warn(f"{kind} has no native bfloat16 (no AVX-512-BF16 or AMX on a CPU): bf16 autocast would "
                      "be emulated and many times slower, so this runs in float32",
                      RuntimeWarning, stacklevel=_stacklevel)
        return "fp32"
    return "bf16" if wanted else "fp32"


def uses_bf16(device: torch.device | str, precision: str = "auto") -> bool:
    return effective_precision(device, precision, _stacklevel=3) == "bf16"  # warn where it was asked


@contextmanager
def autocast(device: torch.device | str, precision: str = "auto") -> Iterator[None]:
    kind = torch.device(device).type
    with ExitStack() as stack:
        if uses_bf16(device, precision):
            stack.enter_context(torch.autocast(kind, dtype=torch.bfloat16))
        if kind == "cpu":
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        yield


# ---- inference ---------------------------------------------------------------------------------
def inference_precision(device: torch.device | str, precision: str = "auto") -> str:
    """What ``Predictor(precision=...)`` runs: as ``effective_precision``, except that "auto" is bf16 also on a
    CPU that computes bfloat16 natively. There bf16 runs a bfloat16 copy of the image tower
    (``mpafer.bf16_inference``), not autocast: about a third less time per face than float32 on the 2-core
    AVX-512-BF16/AMX development machine, with the same validation accuracy (README, "Measured numbers").
    Autocast cast every weight on every call and saved only about 10 %, which is why "auto" was float32
    on every CPU before. Evaluation's "auto" stays float32 on a CPU, so published accuracies are exact and
    the same on every machine."""
    if precision == "auto" and torch.device(device).type == "cpu" and native_bf16(device):
        return "bf16"
    return effective_precision(device, precision, _stacklevel=3)


def uses_bf16_tower(device: torch.device | str, precision: str) -> bool:
    """Whether an effective ``precision`` runs the bf16 image-tower copy (a CPU) rather than autocast."""
    return precision == "bf16" and torch.device(device).type == "cpu"


def inference_autocast(device: torch.device | str, precision: str):
    """For prediction, given an effective ``precision``: bf16 autocast on a GPU; on a CPU nothing at all (bf16
    there is the image-tower copy, and everything after the tower computes in float32), the exact float32
    path (no attention-kernel pin either)."""
    if precision == "bf16" and not uses_bf16_tower(device, precision):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()
