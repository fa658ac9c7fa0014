"""`vitkit bench` through the real CLI: every figure present, consistent and plausible (no speed is asserted)."""
import json

import pytest

from tests.conftest import run_cli

pytest.importorskip("timm")


def test_bench_reports_both_implementations_with_consistent_figures():
    r = run_cli("bench", "--model", "vit_micro_patch7_28", "--batch-size", "16", "--steps", "2", "--repeats", "2",
                "--warmup", "1", "--precision", "fp32", "--compare", "timm", "--mode", "train", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["precision"] == "fp32" and out["batch_size"] == 16 and out["matmul_tflop_per_s"] > 0
    # the peak is the better of the matmul rates measured before and after the timed runs
    assert len(out["matmul_tflop_per_s_runs"]) == 2 and out["matmul_tflop_per_s"] == max(out["matmul_tflop_per_s_runs"])
    assert {(x["implementation"], x["mode"]) for x in out["results"]} == {("vitkit", "train"), ("timm", "train")}
    # timm's forward runs every token through the last block, vitkit's only the class token
    flops = {x["implementation"]: x["gflop_per_image"] * 1e9 for x in out["results"]}
    assert flops["vitkit"] == out["gflop_per_image_forward"] * 1e9 < flops["timm"]
    for x in out["results"]:
        assert len(x["runs_img_per_s"]) == 2 and min(x["runs_img_per_s"]) <= x["img_per_s"] <= max(x["runs_img_per_s"])
        assert x["ms_per_batch"] == pytest.approx(16 * 1000 / x["img_per_s"], rel=0.01)
        factor = 3 if x["mode"] == "train" else 1
        expected = x["img_per_s"] * flops[x["implementation"]] * factor / 1e12
        assert x["tflop_per_s"] == pytest.approx(expected, rel=0.01, abs=1e-3)
        assert 0 < x["mfu"] < 1 and x["peak_mem_mib"] > 0
        # MFU = achieved / peak, both printed rounded to 3 decimals (hence the bounds) and MFU to 4
        peak, achieved = out["matmul_tflop_per_s"], x["tflop_per_s"]
        assert (achieved - 5e-4) / (peak + 5e-4) - 1e-4 <= x["mfu"] <= (achieved + 5e-4) / (peak - 5e-4) + 1e-4
    by = {(x["implementation"], x["mode"]): x["img_per_s"] for x in out["results"]}
    assert out["speedup_vs_timm"]["train"] == pytest.approx(by["vitkit", "train"] / by["timm", "train"], rel=0.01)


def test_bench_table_and_mistakes():
    r = run_cli("bench", "--model", "vit_micro_patch7_28", "--batch-size", "8", "--steps", "1", "--repeats", "1",
                "--mode", "infer")
    assert r.returncode == 0 and "MFU" in r.stdout and "before the runs" in r.stdout, r.stderr
    bad = run_cli("bench", "--model", "vit_nope")
    assert bad.returncode == 2 and "unknown model" in bad.stderr
    zero = run_cli("bench", "--steps", "0")
    assert zero.returncode == 2 and "at least 1" in zero.stderr
    # a batch beyond any machine's memory (and address space): one line with the fix, no traceback
    huge = run_cli("bench", "--model", "vit_micro_patch7_28", "--batch-size", str(10 ** 11), "--mode", "infer")
    assert huge.returncode == 2 and "Traceback" not in huge.stderr
    assert huge.stderr.strip() == ("vitkit: error: out of memory (tried to allocate 292,062.8 GiB on the CPU): try a "
                                   "smaller --batch-size")


def test_bench_trains_as_vitkit_train_does_bf16_weights_on_a_cpu_unless_turned_off():
    common = ["bench", "--model", "vit_micro_patch7_28", "--batch-size", "8", "--steps", "1", "--repeats", "1",
              "--warmup", "1", "--device", "cpu", "--mode", "train", "--precision"]
    on, off = run_cli(*common, "bf16"), run_cli(*common, "bf16", "--no-bf16-weights", "--json")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert "vitkit's training step: a bf16 copy of the weights, fp32 master weights" in on.stdout
    assert json.loads(off.stdout)["bf16_weights"] is False
    fp32 = run_cli(*common, "fp32", "--bf16-weights")
    assert fp32.returncode == 2 and "needs bf16 training" in fp32.stderr


def test_the_blocked_mlp_of_the_mlp_benchmark_computes_what_the_mlp_does():
    """`benchmarks/mlp_step.py` times an MLP run over blocks of rows: its outputs and gradients must be the model's."""
    import importlib.util
    from pathlib import Path

    import torch

    from vitkit.models.vit import Mlp

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mlp_step.py"
    spec = importlib.util.spec_from_file_location("mlp_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    mlp = Mlp(8, 32).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)  # 14 rows: blocks of 4, 4, 4 and 2
    results = []
    for fn in (mlp.forward, lambda t: module.BlockedMlpFunction.apply(t, mlp.fc1.weight, mlp.fc1.bias,
                                                                       mlp.fc2.weight, mlp.fc2.bias, 4)):
        mlp.zero_grad()
        x.grad = None
        out = fn(x)
        out.pow(2).sum().backward()
        results.append([out, x.grad] + [p.grad.clone() for p in mlp.parameters()])
    for want, got in zip(*results):
        torch.testing.assert_close(got, want)
