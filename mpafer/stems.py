"""Convolutional stems that can replace a ViT's patchify convolution.

A plain patchify ViT learns poorly from ~25k small face images; a convolutional stem with
the same total stride keeps the token interface (a grid of patch tokens plus a class token)
that visual prompts and CGLA need, while learning like a CNN (ARCHITECTURE.md, measured).
The stem is declared in a model config under ``mpafer_stem`` and built here, so open_clip's
own modules are never edited: ``visual.conv1`` is simply another module with the same output.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


class Stem(nn.Sequential):
    """A conv stem. On the CPU its input goes channels-last first in eval mode and under bf16 autocast:
    oneDNN's convolutions and max-pooling run faster on NHWC there (eval: about 1.3x on the default
    model's stem at batch 2, in training/bench_face_latency.py's setting; bf16 training at batch 128:
    forward and backward 158 ms instead of 350 on the 2-core AVX-512-BF16 machine, NCHW max-pooling
    alone ten times slower). Float32 training keeps torch's default layout (NHWC was slower: 668 ms
    against 541)."""

    fold_for_inference = True  # False runs the modules one by one in inference too (benchmarks compare)

    def forward(self, x):
        if x.device.type == "cpu" and (not self.training or torch.is_autocast_enabled("cpu")):
            x = x.contiguous(memory_format=torch.channels_last)
            if self.fold_for_inference and not self.training and not torch.is_grad_enabled():
                folded = self._folded_layers()
                if folded is not None:
                    return self._inference_forward(x, folded)
        return super().forward(x)

    # Inference on the CPU (eval, no autograd: the demo, evaluation; Grad-CAM takes the path above):
    # each batch norm folded into the convolution before it, and the convolution weights stored
    # channels-last, so that oneDNN runs every convolution (with NCHW weights torch sends batch-1
    # convolutions to its slow im2col kernel) and no batch-norm pass is left. Same outputs to
    # float32 rounding (tests/test_backbone.py). The folded weights are a cache, never saved or copied:
    # dropped on train()/eval(), .to()/.half(), a state-dict load, and rebuilt when a parameter's
    # version counter moves (in-place optimiser steps). Writes that bypass the counter (``.data``,
    # fused optimisers) or a new Parameter object, while the stem stays in eval, need
    # ``clear_inference_cache()``.
    def _inference_forward(self, x: torch.Tensor, folded_layers: list) -> torch.Tensor:
        for module, folded in zip(self, folded_layers):
            if folded is None:
                x = module(x)
            elif folded is not FOLDED_AWAY:
                weight, bias = folded
                x = nn.functional.conv2d(x, weight, bias, module.stride, module.padding, module.dilation,
                                         module.groups)
        return x

    def _folded_layers(self) -> list | None:
        """The folded stem, or None for weights made under inference_mode (no version counter to watch)."""
        cached = self.__dict__.get("_folded_cache")  # not a buffer: never saved, never moved by .to()
        # per call only the watched tensors' counters are read (walking the modules costs 6x more)
        if cached is not None and cached[1] == _versions(cached[0]):
            return cached[2]
        tensors = [*self.parameters(), *self.buffers()]
        if any(t.is_inference() for t in tensors):
            return None
        with torch.inference_mode(False), torch.no_grad():
            self.__dict__["_folded_cache"] = (tensors, _versions(tensors), _fold_batch_norms(list(self)))
        return self.__dict__["_folded_cache"][2]

    def clear_inference_cache(self) -> None:
        self.__dict__.pop("_folded_cache", None)

    def train(self, mode: bool = True):
        self.clear_inference_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.clear_inference_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_inference_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_folded_cache", None)
        return state


def _versions(tensors: list[torch.Tensor]) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in tensors)


FOLDED_AWAY = "folded-away"  # a batch norm whose affine map now lives in the convolution before it


def _fold_batch_norms(modules: list[nn.Module]) -> list:
    """Per module: (weight, bias) for a convolution (its batch norm folded in when one follows),
    ``FOLDED_AWAY`` for that batch norm, None for anything run as it is."""
    folded: list = []
    for index, module in enumerate(modules):
        if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
            weight = module.weight
            bias = module.bias if module.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype,
                                                                           device=weight.device)
            after = modules[index + 1] if index + 1 < len(modules) else None
            if isinstance(after, nn.BatchNorm2d) and after.track_running_stats and after.running_var is not None:
                scale = torch.rsqrt(after.running_var + after.eps)
                if after.affine:
                    scale = scale * after.weight
                shift = -after.running_mean * scale + (after.bias if after.affine else 0.0)
                weight = weight * scale[:, None, None, None]
                bias = bias * scale + shift
            folded.append((weight.contiguous(memory_format=torch.channels_last), bias.contiguous()))
        elif isinstance(module, nn.BatchNorm2d) and folded and isinstance(folded[-1], tuple) \
                and isinstance(modules[index - 1], nn.Conv2d) and module.track_running_stats \
                and module.running_var is not None:
            folded.append(FOLDED_AWAY)
        else:
            folded.append(None)
    return folded


def folded_copy(stem: Stem) -> Stem:
    """A new stem for inference only: each batch norm that follows a convolution folded into it for good
    (the convolution gains a bias), nested modules copied as they are. Same outputs in eval mode."""
    layers: list[nn.Module] = []
    with torch.no_grad():
        for module, folded in zip(stem, _fold_batch_norms(list(stem))):
            if folded is FOLDED_AWAY:
                continue
            if folded is None:
                layers.append(copy.deepcopy(module))
                continue
            conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                             module.padding, module.dilation, module.groups, bias=True,
                             device=module.weight.device, dtype=module.weight.dtype)
            conv.weight.copy_(folded[0])
            conv.bias.copy_(folded[1])
            layers.append(conv)
    return Stem(*layers).eval()


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _stages(stride: int) -> int:
    stages = stride.bit_length() - 1
    if 2**stages != stride or stages < 1:
        raise ValueError(f"a conv stem needs a power-of-two patch size, got {stride}")
    return stages


def conv_stem(out_channels: int, stride: int, widths: list[int] | None = None) -> Stem:
    """log2(stride) stride-2 3x3 conv-BN-ReLU layers, then a 1x1 projection to the ViT width."""
    stages = _stages(stride)
    widths = widths or [min(out_channels, 32 * 2**i) for i in range(stages)]
    layers: list[nn.Module] = []
    cin = 3
    for width in widths[:stages]:
        layers += _conv_bn_relu(cin, width, 2)
        cin = width
    layers.append(nn.Conv2d(cin, out_channels, 1))
    return Stem(*layers)


def vgg_stem(out_channels: int, stride: int, widths: list[int] | None = None,
             depths: list[int] | None = None) -> Stem:
    """VGG-style stages of 3x3 conv-BN-ReLU layers (``depths``, two per stage by default) with a 2x2
    max-pool between them, then a 1x1 projection to the ViT width: log2(stride) + 1 stages, the first
    at full resolution.

    At FERPlus's native 48 px this is the plain CNN that trains fastest on a CPU
    (ARCHITECTURE.md); with stride 4 it hands a 12x12 grid to the transformer. A deeper last stage
    moves work from the transformer to convolutions, which learn better from ~25k faces and run
    faster per FLOP on a CPU.
    """
    stages = _stages(stride) + 1
    widths = list(widths or [min(out_channels, 32 * 2**i) for i in range(stages)])
    depths = list(depths or [2] * stages)
    if len(widths) != stages or len(depths) != stages:
        raise ValueError(f"a vgg stem with stride {stride} needs {stages} widths and depths, "
                         f"got widths {widths}, depths {depths}")
    if any(not isinstance(d, int) or d < 1 for d in depths):
        raise ValueError(f"vgg stem depths must be positive integers, got {depths}")
    layers: list[nn.Module] = []
    cin = 3
    for index, (width, depth) in enumerate(zip(widths, depths)):
        if index:
            layers.append(nn.MaxPool2d(2))
        for _ in range(depth):
            layers += _conv_bn_relu(cin, width, 1)
            cin = width
    layers.append(nn.Conv2d(cin, out_channels, 1))
    return Stem(*layers)


def _resnet_layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    layers = [BasicBlock(cin, cout, stride, down)] + [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet_stem(out_channels: int, stride: int, width: int = 64, blocks: int = 2) -> Stem:
    """ResNet-18's stem + layer1 + layer2 (total stride 8), then a 1x1 projection to the ViT width.

    The 7x7/2 conv and the max-pool give stride 4 (layer1 alone for patch size 4), layer2 another 2;
    for stride 16 a layer3 is added.
    """
    if stride not in (4, 8, 16):
        raise ValueError(f"the resnet stem supports patch size 4, 8 or 16, got {stride}")
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
        _resnet_layer(width, width, blocks, 1),
    ]
    cin = width
    if stride >= 8:
        layers.append(_resnet_layer(width, width * 2, blocks, 2))
        cin = width * 2
    if stride == 16:
        layers.append(_resnet_layer(cin, width * 4, blocks, 2))
        cin = width * 4
    layers.append(nn.Conv2d(cin, out_channels, 1))
    return Stem(*layers)


def build_stem(stem_cfg: dict[str, Any], out_channels: int, stride: int) -> nn.Module:
    kind = stem_cfg.get("type")
    options = {k: v for k, v in stem_cfg.items() if k != "type"}
    if kind == "conv":
        return conv_stem(out_channels, stride, **options)
    if kind == "resnet":
        return resnet_stem(out_channels, stride, **options)
    if kind == "vgg":
        return vgg_stem(out_channels, stride, **options)
    raise ValueError(f"unknown mpafer_stem type {kind!r} (known: 'conv', 'resnet', 'vgg')")
