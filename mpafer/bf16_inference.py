"""A bfloat16 copy of a model's image tower, for classifying faces on a CPU that computes bf16 natively.

Under bf16 autocast every call casts every weight again (and the attention runs written out, as
training needs): on the 2-core AVX-512-BF16/AMX development machine that bought only about 10 %
per face over float32. The copy here is made once: the conv stem's batch norms folded in, every
weight in bfloat16 and, where torch has oneDNN's prepacked-weight operators (the ones Inductor's
CPU freezing emits: ``torch.ops.mkldnn``), each convolution and linear layer stored in oneDNN's
own layout with the ReLU or GELU after it fused in, so no call reorders a weight. Elsewhere the same
copy runs plain ``conv2d``/``linear`` in bfloat16. Times: README, "Measured numbers"
(``training/bench_face_latency.py``).

Only the image tower is copied (about 1 M parameters for the default model, 2 MB); its outputs are
normalised in float32 and scored by the model itself (``MPAFER.image_embeddings``, and
``MPAFER.forward`` with this copy as its ``image_encoder``), so text features, CGLA, maps and every
explanation stay float32. The attention runs through SDPA's fused kernel
(``mpafer.cpu_attention.fused_attention``).

The copy follows the model: it is rebuilt when a weight of the image tower or its visual prompts
changes (an in-place step or a loaded state dict moves a version counter; a new tensor has new
storage), as ``mpafer.stems.Stem``'s folding cache is.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from functools import lru_cache

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .cpu_attention import fused_attention, is_plain_block
from .model import MPAFER, MPAFEROutput
from .prompts import visual_features
from .stems import Stem, folded_copy


@lru_cache(maxsize=None)
def prepacked_ops() -> bool:
    """Whether this torch has oneDNN's prepacked convolution and linear operators (and they run here)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn
        weight = ops._reorder_linear_weight(torch.ones(2, 2, dtype=torch.bfloat16), None)
        out = ops._linear_pointwise(torch.ones(1, 2, dtype=torch.bfloat16), weight, None, "none", [], "")
        kernel = ops._reorder_convolution_weight(torch.ones(1, 1, 1, 1, dtype=torch.bfloat16), [0, 0], [1, 1],
                                                 [1, 1], 1, None)
        image = ops._convolution_pointwise(torch.ones(1, 1, 2, 2, dtype=torch.bfloat16), kernel, None, [0, 0],
                                           [1, 1], [1, 1], 1, "none", [], "")
        return bool(out.eq(2).all() and image.eq(1).all())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def packable(conv: nn.Module) -> bool:
    """A convolution ``PackedConv2d`` can take: zero padding given in numbers (not "same"/"valid")."""
    return isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


class PackedConv2d(nn.Module):
    """A bfloat16 convolution, optionally followed by a ReLU: one oneDNN call with a prepacked weight
    where torch has it (``prepacked_ops``), else ``conv2d`` (and ``relu``)."""

    def __init__(self, conv: nn.Conv2d, relu: bool):
        super().__init__()
        if not packable(conv):
            raise ValueError("only zero-padded convolutions with explicit padding are packed")
        self.options = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.relu = relu
        weight = conv.weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        self.bias = None if conv.bias is None else conv.bias.detach().to(torch.bfloat16)
        self.packed = prepacked_ops()
        # plain attributes, not buffers: an opaque oneDNN tensor is never saved, moved or cast
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(weight, *self.options, None) \
            if self.packed else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding, stride, dilation, groups = self.options
        if self.packed:
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, padding, stride, dilation,
                                                           groups, "relu" if self.relu else "none", [], "")
        x = nn.functional.conv2d(x, self.weight, self.bias, stride, padding, dilation, groups)
        return torch.relu_(x) if self.relu else x


class PackedLinear(nn.Module):
    """A bfloat16 linear layer, optionally followed by a GELU (``approximate`` as nn.GELU's): one oneDNN call
    with a prepacked weight where torch has it, else ``linear`` (and ``gelu``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None = None):
        super().__init__()
        self.gelu = gelu
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)
        weight = weight.detach().to(torch.bfloat16).contiguous()
        self.packed = prepacked_ops()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, None) if self.packed else weight

    @classmethod
    def of(cls, linear: nn.Linear, gelu: str | None = None) -> "PackedLinear":
        return cls(linear.weight, linear.bias, gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            if self.gelu is None:
                return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "gelu", [], self.gelu)
        x = nn.functional.linear(x, self.weight, self.bias)
        return x if self.gelu is None else nn.functional.gelu(x, approximate=self.gelu)


def packed_stem(stem: Stem) -> Stem:
    """A bfloat16 copy of a float32 stem: batch norms folded (in float32, so the fold itself is not rounded),
    then each zero-padded convolution packed with the ReLU that follows it."""
    folded = list(folded_copy(stem))
    layers: list[nn.Module] = []
    index = 0
    while index < len(folded):
        module = folded[index]
        if packable(module):
            relu = index + 1 < len(folded) and isinstance(folded[index + 1], nn.ReLU)
            layers.append(PackedConv2d(module, relu))
            index += 2 if relu else 1
        else:
            layers.append(module)
            index += 1
    return Stem(*layers).to(torch.bfloat16).eval()  # the packed weights are not parameters: .to leaves them


class InferenceBlock(nn.Module):
    """An open_clip residual block of the bf16 copy: packed projections (GELU fused into the first MLP
    layer), layer norms, layer scales and the attention in bfloat16."""

    def __init__(self, block: nn.Module):
        super().__init__()
        attn, mlp = block.attn, block.mlp
        self.ln_1, self.ls_1, self.ln_2, self.ls_2 = block.ln_1, block.ls_1, block.ln_2, block.ls_2
        self.heads = attn.num_heads
        self.qkv = PackedLinear(attn.in_proj_weight, attn.in_proj_bias)
        self.out = PackedLinear.of(attn.out_proj)
        self.fc = PackedLinear.of(mlp.c_fc, gelu=mlp.gelu.approximate)
        self.proj = PackedLinear.of(mlp.c_proj)

    @staticmethod
    def fits(block: nn.Module) -> bool:
        """open_clip's plain block with its default MLP (Linear, GELU, Linear); anything else stays as it is."""
        mlp = getattr(block, "mlp", None)
        return (is_plain_block(block) and isinstance(mlp, nn.Sequential)
                and list(mlp._modules) == ["c_fc", "gelu", "c_proj"] and isinstance(mlp.c_fc, nn.Linear)
                and isinstance(mlp.gelu, nn.GELU) and isinstance(mlp.c_proj, nn.Linear))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("the bf16 inference copy runs image towers without an attention mask")
        x = x + self.ls_1(self.out(fused_attention(self.qkv(self.ln_1(x)), self.heads)))
        return x + self.ls_2(self.proj(self.fc(self.ln_2(x))))


def bf16_copy(module: nn.Module) -> nn.Module:
    """An eval-mode bfloat16 copy of an image tower (or prompts): its conv stem and plain blocks packed."""
    duplicate = copy.deepcopy(module).eval()
    for parameter in duplicate.parameters():
        parameter.requires_grad_(False)
    stem = getattr(duplicate, "conv1", None)
    if isinstance(stem, Stem):
        duplicate.conv1 = nn.Identity()  # packed from its float32 weights below
    duplicate = duplicate.to(torch.bfloat16)
    if isinstance(stem, Stem):
        duplicate.conv1 = packed_stem(stem)
    elif packable(stem):
        duplicate.conv1 = PackedConv2d(stem, relu=False)  # a plain ViT's patchify convolution
    if isinstance(getattr(duplicate, "proj", None), torch.Tensor):  # the output projection: a packed layer too
        duplicate.packed_proj = PackedLinear(duplicate.proj.t(), None)  # pooled @ proj == linear(pooled, proj.T)
        duplicate.proj = None  # visual_features hands on unprojected features; encode_image projects them
    transformer = getattr(duplicate, "transformer", None)
    if transformer is not None and getattr(transformer, "batch_first", True):
        blocks = transformer.resblocks
        for index, block in enumerate(blocks):
            if InferenceBlock.fits(block):
                blocks[index] = InferenceBlock(block)
    return duplicate


class Bf16ImageTower:
    """``tower(images)`` is ``model(images, with_text_tokens=False)`` with the image tower run in bfloat16."""

    def __init__(self, model: MPAFER):
        if model.device.type != "cpu":
            raise ValueError(f"the bf16 image-tower copy is for CPU inference; the model is on {model.device}")
        self.model = model
        self._cache: tuple | None = None  # (watched tensors, their versions, visual copy, prompts copy)

    def __call__(self, images: torch.Tensor) -> MPAFEROutput:
        return self.model(images, with_text_tokens=False, image_encoder=self.encode_image)

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual, prompts = self._copies()
        # the weights are bf16 already (no cast per call); the fused attention kernel whatever a caller pinned
        # (evaluation pins the plain-math one for training's sake), so evaluation computes what Predictor does
        with torch.autocast("cpu", enabled=False), sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
            features = visual_features(visual, images.to(torch.bfloat16), prompts)
            project = getattr(visual, "packed_proj", None)
            if project is not None:
                features = replace(features, pooled=project(features.pooled), patches=project(features.patches))
        return self.model.image_embeddings(features)

    def _copies(self) -> tuple[nn.Module, nn.Module | None]:
        cache = self._cache
        # per call only the watched tensors' counters are read (walking the modules costs more than
        # the whole transformer at this size)
        if cache is None or cache[1] != _versions(cache[0]):
            tensors = self._tensors()
            # plain tensors even under inference_mode, so the copy can be reused outside it
            with torch.inference_mode(False), torch.no_grad():
                prompts = self.model.visual_prompts
                self._cache = cache = (tensors, _versions(tensors), bf16_copy(self.model.clip.visual),
                                       bf16_copy(prompts) if prompts is not None else None)
        return cache[2], cache[3]

    def refresh(self) -> None:
        """Rebuild the copy at the next call: needed only after writes the version counters miss (a new
        Parameter object put into the model, ``.data`` writes)."""
        self._cache = None

    def _tensors(self) -> list[torch.Tensor]:
        tensors = [*self.model.clip.visual.parameters(), *self.model.clip.visual.buffers()]
        if self.model.visual_prompts is not None:
            tensors += list(self.model.visual_prompts.parameters())
        return tensors


def _versions(tensors: list[torch.Tensor]) -> tuple:
    # tensors made under inference_mode have no version counter: their storage is all there is to watch
    return tuple((t.data_ptr(), None if t.is_inference() else t._version) for t in tensors)
