"""bf16 training with fp32 master weights: the working copy's gradients against fp32, shared BatchNorm statistics,
weights copied back after the step, and the trainer's use of it (exact resume is in test_reliability)."""
import copy

import pytest
import torch
from torch import nn

from vitkit.engine.master import Bf16Weights, use_bf16_weights
from vitkit.errors import UserError
from vitkit.models import create_model

from .conftest import run_cli


def _model():
    torch.manual_seed(0)
    # the conv stem has BatchNorm, which stays fp32 in the working copy
    return create_model("vit_micro_patch7_28", stem="conv", embed_dim=64, depth=2, num_heads=2, num_classes=5)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 5, (64,), generator=g)


def test_the_working_copy_is_bf16_but_batchnorm_and_its_statistics_are_the_masters():
    master = _model().train()
    work = Bf16Weights(master)
    for (name, p), (_, m) in zip(work.module.named_parameters(), master.named_parameters()):
        in_bn = name.startswith("patch_embed.stem.") and p.ndim == 1
        assert p.dtype == (torch.float32 if in_bn else torch.bfloat16), name
        assert m.dtype == torch.float32 and p.data_ptr() != m.data_ptr()
    x, _ = _batch()
    before = master.patch_embed.stem[1].running_mean.clone()
    work.module(x.bfloat16())
    after = master.patch_embed.stem[1].running_mean
    assert after.dtype == torch.float32 and not torch.equal(before, after)  # the master's statistics moved
    assert work.module.patch_embed.stem[1].running_mean is after


def test_gradients_match_fp32_and_the_step_reaches_the_working_copy():
    reference = _model().train()
    master = copy.deepcopy(reference)
    work = Bf16Weights(master)
    x, y = _batch()
    torch.manual_seed(2)
    nn.functional.cross_entropy(reference(x), y).backward()
    torch.manual_seed(2)
    nn.functional.cross_entropy(work.module(x.bfloat16()).float(), y).backward()
    work.grads_to_master()
    assert all(p.grad is None for p in work.module.parameters())
    ref = torch.cat([p.grad.flatten() for p in reference.parameters()])
    got = torch.cat([p.grad.flatten() for p in master.parameters()])
    assert all(p.grad.dtype == torch.float32 for p in master.parameters())
    assert (got - ref).norm() / ref.norm() < 0.05  # bf16 rounding, not a wrong or missing gradient
    for (name, a), b in zip(reference.named_parameters(), master.parameters()):
        assert torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0) > 0.98, name

    optimizer = torch.optim.AdamW(master.parameters(), lr=1e-2)
    optimizer.step()
    assert not torch.equal(work.module.head.weight.float(), master.head.weight.bfloat16().float())
    work.sync()
    for a, b in zip(work.module.parameters(), master.parameters()):
        assert torch.equal(a, b.to(a.dtype))


def test_auto_means_bf16_training_on_a_cpu_and_a_contradiction_is_refused():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_bf16_weights(None, cpu, torch.bfloat16) and not use_bf16_weights(None, cpu, None)
    assert not use_bf16_weights(None, cuda, torch.bfloat16) and use_bf16_weights(True, cuda, torch.bfloat16)
    assert not use_bf16_weights(False, cpu, torch.bfloat16)
    with pytest.raises(UserError, match="needs bf16 training"):
        use_bf16_weights(True, cpu, None)


def test_the_cli_refuses_bf16_weights_with_fp32(fake_mnist, tmp_path):
    r = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, "--precision", "fp32", "--set",
                "train.bf16_weights=true", "--out", tmp_path, "--no-progress")
    assert r.returncode == 2 and "train.bf16_weights=true needs bf16 training" in r.stderr
    assert "Traceback" not in r.stderr and not any(tmp_path.iterdir())
