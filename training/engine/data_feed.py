"""A split held as tensors, seeded epoch orders and augmentation keys, and batch gathering.

The whole split is held as uint8 tensors (on the GPU when it fits, else in pinned host memory), so
an epoch never decodes an image. Every random draw comes from a generator keyed by what it is for
(seed, purpose, epoch, step): a resumed run, and a run on any number of GPUs with the same global
batch, sees the same images.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from mpafer.transforms import to_model_input

from .config import ConfigError
from .distributed import Dist


@dataclass
class HeldData:
    """A split as tensors: uint8 images (device or pinned host), labels and training targets on the device."""

    images: torch.Tensor  # (N, S, S, 3) uint8
    labels: torch.Tensor  # (N,) int64
    targets: torch.Tensor  # (N,) class indices, or (N, C) label distributions
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_split(load: Callable[[], object], ctx: Dist):
    """``load()`` on rank 0 first, so the other ranks read the decoded cache it writes."""
    dataset = load() if ctx.main else None
    ctx.barrier()
    return dataset if ctx.main else load()


def hold(dataset, device: torch.device, soft: bool, pin: bool = True, max_fraction: float = 0.4) -> HeldData:
    """Put a split on the device when it takes less than ``max_fraction`` of the free memory.

    Otherwise the images stay on the host: pinned for one process, or, with several processes, in
    the memory-mapped dataset cache, whose pages the operating system shares between the ranks
    (eight pinned copies of AffectNet would not fit in the host's memory).
    """
    if soft and dataset.soft_labels is None:
        raise ConfigError(f"data.soft_labels is true but {dataset.name} {dataset.split} has no label "
                          f"distributions; set data.soft_labels: false")
    images = torch.from_numpy(np.ascontiguousarray(dataset.images))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.numel() < max_fraction * free:
            images = images.to(device)
        elif pin:
            try:
                images = images.pin_memory()
            except RuntimeError as err:  # very large sets: pageable memory still works, only slower
                print(f"warning: cannot pin {images.numel() / 1e9:.1f} GB of images ({err}); "
                      f"using pageable memory", file=sys.stderr)
    labels = torch.from_numpy(dataset.labels).to(device)
    targets = torch.from_numpy(dataset.soft_labels).to(device) if soft else labels
    return HeldData(images, labels, targets, tuple(dataset.classes))


class BatchGather:
    """uint8 images of given indices, on the device.

    Device-resident data is indexed in place. Host data is gathered into one of two pinned
    staging buffers and copied asynchronously; an event keeps a buffer from being refilled
    while its previous copy is still in flight.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, device: torch.device):
        self.images, self.device = images, device
        self.staged = images.device.type == "cpu" and device.type == "cuda"
        if self.staged:
            shape = (batch_size, *images.shape[1:])
            self.buffers = [torch.empty(shape, dtype=images.dtype).pin_memory() for _ in range(2)]
            self.events: list[torch.cuda.Event | None] = [None, None]
            self.turn = 0

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        if not self.staged:
            return self.images[index.to(self.images.device)]
        slot = self.turn % 2
        self.turn += 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        buffer = self.buffers[slot][: index.shape[0]]
        torch.index_select(self.images, 0, index.cpu(), out=buffer)
        batch = buffer.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[slot] = event
        return batch


def seeded_generator(*key: int) -> torch.Generator:
    """A CPU generator for one purpose, epoch and step: draws never depend on what ran before."""
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=seeded_generator(seed, 0, epoch))


def image_batches(data: HeldData, batch_size: int, size: int, mean, std,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Model-ready images, without augmentation, with their hard labels (for the prototypes)."""
    for start in range(0, len(data), batch_size):
        yield to_model_input(data.images[start:start + batch_size], size, mean, std, device=device), \
            data.labels[start:start + batch_size]
