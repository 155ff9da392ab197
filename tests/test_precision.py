"""bf16 only where the hardware does it natively: emulated bf16 on an AVX2 CPU is many times slower."""
import contextlib

import pytest
import torch

from mpafer import precision


@pytest.mark.parametrize("native", [True, False])
def test_bf16_falls_back_to_float32_without_native_support(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    if native:
        assert precision.effective_precision("cpu", "bf16") == "bf16"
    else:
        with pytest.warns(RuntimeWarning, match="no native bfloat16"):
            assert precision.effective_precision("cpu", "bf16") == "fp32"
    # "auto" keeps a CPU exact, "fp32" is always float32
    assert precision.effective_precision("cpu", "auto") == "fp32"
    assert precision.effective_precision("cpu", "fp32") == "fp32"


def test_autocast_follows_the_effective_precision(monkeypatch):
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    with precision.autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.bfloat16
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    with pytest.warns(RuntimeWarning), precision.autocast("cpu", "bf16"):
        assert layer(x).dtype == torch.float32


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.effective_precision("cpu", "fp8")


def test_native_bf16_probe_answers_on_this_machine():
    assert isinstance(precision.native_bf16("cpu"), bool)


def test_inference_autocast_is_nothing_on_a_cpu():
    """bf16 on a CPU is the image-tower copy (mpafer.bf16_inference), not autocast: nothing to enter."""
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    for wanted in ("bf16", "fp32"):
        with precision.inference_autocast("cpu", wanted):
            assert not torch.is_autocast_enabled("cpu") and layer(x).dtype == torch.float32
    assert precision.uses_bf16_tower("cpu", "bf16") and not precision.uses_bf16_tower("cpu", "fp32")
    assert not precision.uses_bf16_tower("cuda", "bf16")


@pytest.mark.parametrize("native", [True, False])
def test_inference_precision_auto_is_bf16_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(precision, "_native_bf16", lambda kind: native)
    assert precision.inference_precision("cpu") == ("bf16" if native else "fp32")
    assert precision.inference_precision("cpu", "fp32") == "fp32"
    assert precision.effective_precision("cpu") == "fp32"  # evaluation's auto: float32 on every CPU
    with contextlib.nullcontext() if native else pytest.warns(RuntimeWarning, match="no native bfloat16"):
        assert precision.inference_precision("cpu", "bf16") == ("bf16" if native else "fp32")
