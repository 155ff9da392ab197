"""Multi-process training: torchrun with two gloo ranks on the CPU, tiny model.

Both ranks must end with bit-identical prompts, and since each rank takes its half of every
global batch (and the augmentation draws are made per global batch), two ranks of 4 must learn
what one process with batches of 8 learns, up to float rounding.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mpafer.model import MPAFERConfig, create_model
from fakes import make_ferplus_pack
from test_train import (HOOKS, TINY_CONFIG, TRAIN_SCRIPT, learnable, read_metrics, subprocess_env,
                        train_args, train_script)


@pytest.mark.slow
def test_two_gloo_ranks_agree_with_each_other_and_with_one_process(tmp_path, monkeypatch):
    data, cache = make_ferplus_pack(tmp_path / "ferplus"), tmp_path / "cache"
    dumps = tmp_path / "weights"
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HOOKS), "--dump-weights", str(dumps), str(TRAIN_SCRIPT),
               *train_args(data, out, "--epochs", "1", "--batch-size", "4")]
    run = subprocess.run(command, env=subprocess_env(cache),
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "on 2 x cpu" in run.stdout

    rank0, rank1 = (load_file(str(dumps / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    saved = learnable(out / "last")  # rank 0 wrote the checkpoint
    for name in rank0:
        assert torch.equal(saved[f"learnable.{name}"], rank0[name])
    assert [int(r["epoch"]) for r in read_metrics(out)] == [1]
    assert (out / "test_metrics.json").is_file()

    single = tmp_path / "single"
    monkeypatch.setenv("MPAFER_CACHE", str(cache))
    assert train_script.main(train_args(data, single, "--epochs", "1", "--batch-size", "8")) == 0
    reference = learnable(single / "last")
    for name in rank0:
        assert torch.allclose(reference[f"learnable.{name}"], rank0[name], atol=1e-5), name

    torch.manual_seed(0)  # the run's seed: the prompts before training
    initial = create_model(MPAFERConfig.from_dict(yaml.safe_load(TINY_CONFIG.read_text())["model"]))
    moved = [(initial.learnable_state_dict()[n] - rank0[n]).abs().max().item() for n in rank0]
    assert min(moved) > 1e-4  # every prompt tensor learned: the agreement above is not trivial
