"""Training and inference throughput of MPA-FER on one device, as a markdown table.

    python training/bench_gpu.py                        # ViT-B/16, 224 px, batches 32-256, eager, bf16
    python training/bench_gpu.py --compile              # eager and torch.compile rows
    python training/bench_gpu.py --device cpu --model mpafer-tiny --batch-sizes 8 16   # smoke check

What one step includes, as in training/train.py: uint8 faces picked from a device-resident tensor,
augmentation on the device (mpafer.augment), the prompted image encoder and the soft-prompt text
encoder under bf16 autocast (CUDA), the full loss (CE + L_t + L_v), backward into the prompts and
an SGD step. Inference: resize + normalise (transforms.to_model_input) and the forward pass with
cached text features. Backbone weights are random (the cost does not depend on their values).

FLOPs per image are counted with torch.utils.flop_counter.FlopCounterMode on one step (matrix
products and attention; backward included for training, and only what runs: no weight gradients
for the frozen encoder). "% of peak" relates achieved FLOP/s to a matrix-product ceiling measured
here with one large bf16 (CPU: float32) matmul.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mpafer.augment import AugmentConfig, apply_augment, sample_augment  # noqa: E402
from mpafer.transforms import to_model_input  # noqa: E402
from mpafer.backbone import BackboneConfig  # noqa: E402
from mpafer.model import MPAFERConfig, create_model  # noqa: E402
from mpafer.objective import mpafer_loss  # noqa: E402
from mpafer.precision import autocast  # noqa: E402  (auto: bf16 on CUDA, float32 on a CPU)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fused_attention_flops(query, key, value, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of nn.MultiheadAttention's fused inference kernel, which FlopCounterMode does not know.

    Projections of query, key and value, the two attention products, and the output projection.
    Shapes are (batch, length, embed_dim); open_clip's blocks are batch-first.
    """
    batch, q_len, width = query
    k_len = key[1]
    projections = 2 * batch * (q_len + 2 * k_len) * width * width + 2 * batch * q_len * width * width
    return projections + 2 * 2 * batch * q_len * k_len * width


FLOP_FORMULAS = {torch.ops.aten._native_multi_head_attention: fused_attention_flops}


def matmul_ceiling(device: torch.device, size: int, repeats: int = 10) -> float:
    """Measured FLOP/s of a large square matrix product (bf16 on CUDA, float32 on CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):  # the best of three: a ceiling should not include someone else's load
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 * repeats / best


class Bench:
    """One model, its device-resident uint8 face pool, and timed training / inference steps."""

    def __init__(self, model, pool: torch.Tensor, compiled: bool):
        self.model, self.pool, self.device = model, pool, model.device
        self.forward = torch.compile(model, dynamic=False) if compiled else model
        self.augment = AugmentConfig()
        self.optimizer = torch.optim.SGD(list(model.learnable_parameters().values()), lr=1e-3, momentum=0.9)
        info = model.backbone_info
        self.size, self.mean, self.std = model.image_size, info.mean, info.std

    def train_step(self, batch: int) -> None:
        index = torch.randint(0, self.pool.shape[0], (batch,), device=self.device)
        images = apply_augment(self.pool[index], sample_augment(batch, self.augment), self.size, self.mean, self.std)
        labels = index % self.model.num_classes
        with autocast(self.device):
            output = self.forward(images)
            loss = mpafer_loss(self.model, output, labels)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def infer_step(self, batch: int) -> None:
        start = int(torch.randint(0, self.pool.shape[0] - batch + 1, (1,)))
        images = to_model_input(self.pool[start:start + batch], self.size, self.mean, self.std)
        with torch.inference_mode(), autocast(self.device):
            self.forward(images).logits.argmax(dim=1)

    def throughput(self, step, batch: int, steps: int, warmup: int) -> float:
        self.model.train(step == self.train_step)
        for _ in range(warmup):
            step(batch)
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            step(batch)
        synchronize(self.device)
        return batch * steps / (time.perf_counter() - start)

    def flops_per_image(self, step, batch: int) -> float:
        training = step == self.train_step
        self.model.train(training)
        forward, self.forward = self.forward, self.model  # count the eager graph: same arithmetic
        learnable = list(self.model.learnable_parameters().values())
        try:
            step(batch)  # fills the cached text features, which inference computes only once
            if not training:  # FlopCounterMode's module hooks fail on parameter views in inference mode
                for p in learnable:
                    p.requires_grad_(False)
            with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
                step(batch)
        finally:
            self.forward = forward
            for p in learnable:
                p.requires_grad_(True)
        return counter.get_total_flops() / batch


def build_model(args, device: torch.device):
    config = MPAFERConfig(backbone=BackboneConfig(args.model, image_size=args.image_size), bank=args.bank)
    model = create_model(config, device=device)
    # random unit prototypes stand in for the one-off pass over the training set
    model.prototypes = F.normalize(torch.randn(model.num_classes, model.clip.text_projection.shape[-1],
                                               device=device), dim=-1)
    model.hard_text_features()
    model.hard_token_features()
    return model


def fmt(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name (random weights)")
    parser.add_argument("--image-size", type=int, default=None, help="model input size (default: the model's own)")
    parser.add_argument("--bank", default="ferplus", help="hard-prompt bank (sets the classes)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--source-size", type=int, default=48, help="side of the uint8 faces in the pool (FERPlus: 48)")
    parser.add_argument("--pool", type=int, default=4096, help="faces held on the device")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the ceiling matmul (default 8192, CPU 1024)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available; use --device cpu --model mpafer-tiny for a smoke check", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = build_model(args, device)
    pool = torch.randint(0, 256, (args.pool, args.source_size, args.source_size, 3), dtype=torch.uint8, device=device)
    ceiling = matmul_ceiling(device, args.matmul_size or (8192 if device.type == "cuda" else 1024))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    print(f"MPA-FER on {args.model} at {model.image_size} px, {model.num_classes} classes, "
          f"{model.num_learnable():,} learnable parameters; {name}, {precision}; "
          f"uint8 {args.source_size} px faces from a device-resident pool; "
          f"matmul ceiling {ceiling / 1e12:.1f} TFLOP/s ({precision.split()[0]})\n")
    print("| mode | batch | train img/s | train GFLOP/img | train % of peak "
          "| infer img/s | infer GFLOP/img | infer % of peak |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in ["eager", "compile"] if args.compile else ["eager"]:
        for batch in args.batch_sizes:
            torch._dynamo.reset()  # each batch size compiles its own static graph
            bench = Bench(model, pool, compiled=mode == "compile")
            row = {}
            for kind, step in (("train", bench.train_step), ("infer", bench.infer_step)):
                try:
                    flops = bench.flops_per_image(step, batch)
                    rate = bench.throughput(step, batch, args.steps, args.warmup)
                    row[kind] = (rate, flops, 100 * rate * flops / ceiling)
                except torch.cuda.OutOfMemoryError:
                    row[kind] = None
                    torch.cuda.empty_cache()
            cells = []
            for kind in ("train", "infer"):
                if row[kind] is None:
                    cells += ["OOM", "-", "-"]
                else:
                    rate, flops, peak = row[kind]
                    cells += [fmt(rate), f"{flops / 1e9:.3g}", f"{peak:.1f} %"]
            print(f"| {mode} | {batch} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
