"""Compiled copies of a model's classifying forward, to measure what fused operators would save
(``python training/bench_face_latency.py --compare-traced --compare-compiled``). ``Predictor``
does not use them: TorchScript is deprecated in torch 2.x, and torch.compile costs seconds at
start-up; README's "one face crop" rows give the numbers.

* ``TracedForward``: traced and frozen by TorchScript. ``torch.jit.freeze`` folds the weights and
  the cached class text features into the graph and ``optimize_for_inference`` fuses what oneDNN
  can fuse (convolution + ReLU, linear + GELU, ...): at batch 1 on a 2-core CPU a good part of
  the time goes to running ~150 small operators one by one. The copy checks itself against the
  eager model on a random batch and refuses to exist when they differ; batch size stays free.
* ``CompiledForward``: ``torch.compile`` (Inductor) with freezing, compiled when made.

Both are fixed when made: weights, prompts, text features and the conv stem's folding are
constants in them, so make them from an eval-mode model that will not change afterwards.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mpafer.model import MPAFER, MPAFEROutput

_FIELDS = ("logits", "global_scores", "local_scores", "maps", "image_features", "patch_features")


class OutputTensors(nn.Module):
    """The model's forward with its output's tensors as a tuple (what TorchScript can return)."""

    def __init__(self, model: MPAFER):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(images, with_text_tokens=False)
        return tuple(getattr(output, name) for name in _FIELDS)


class _FrozenCopy:
    """Called like the model, returns an ``MPAFEROutput`` (its ``text`` the eager model's, computed
    once); subclasses set ``module``, ``text`` and the grad mode their module runs under."""

    module: object
    text: object
    grad_mode = staticmethod(torch.no_grad)

    @staticmethod
    def _check_eval(model: MPAFER) -> None:
        if model.training:
            raise ValueError("copy an eval-mode model: model.eval() first")

    def __call__(self, images: torch.Tensor, with_text_tokens: bool = False) -> MPAFEROutput:
        if with_text_tokens:
            raise ValueError("a frozen copy has no text tokens: call the model itself")
        with self.grad_mode():
            return MPAFEROutput(*self.module(images), text=self.text)


class TracedForward(_FrozenCopy):
    """``model(images, with_text_tokens=False)`` as a frozen TorchScript graph."""

    def __init__(self, model: MPAFER, tolerance: float = 1e-4):
        self._check_eval(model)
        side = model.image_size
        example = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape reads: checked below
            reference = model(example, with_text_tokens=False)
            traced = torch.jit.trace(OutputTensors(model).eval(), example, check_trace=False)
            self.module = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            got = self.module(example)
        for name, tensor in zip(_FIELDS, got):
            expected = getattr(reference, name)
            if tensor.shape != expected.shape or not torch.allclose(tensor, expected, atol=tolerance, rtol=0):
                raise RuntimeError(f"the traced forward differs from the model on {name!r}: use the model itself")
        self.text = reference.text


class CompiledForward(_FrozenCopy):
    """The same through ``torch.compile`` with Inductor's freezing (weights become constants and are
    pre-packed for oneDNN); compiled for the first batch size it sees, when made (``batch``)."""

    # compiled and called under inference mode only: a call in another grad mode would recompile,
    # and without the freezing that is read at compile time
    grad_mode = staticmethod(torch.inference_mode)

    def __init__(self, model: MPAFER, batch: int = 2):
        import torch._inductor.config as inductor_config

        self._check_eval(model)
        self.module = torch.compile(OutputTensors(model).eval(), dynamic=False)
        side = model.image_size
        with self.grad_mode():
            example = torch.zeros(batch, 3, side, side)
            self.text = model(example, with_text_tokens=False).text
            with inductor_config.patch(freezing=True):
                self.module(example)  # the compile, outside any timing
