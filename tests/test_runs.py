"""`vitkit runs`: the runs under a folder with their status, from what training writes (status.json)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from vitkit.runs import list_runs

from .conftest import TINY_MODEL, render_in_chromium, run_cli


def _status(run, **changes):
    path = run / "status.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_runs_lists_finished_failed_interrupted_and_running_runs(fake_mnist, tmp_path):
    runs = tmp_path / "runs"
    common = ["fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--batch-size", "64", "--out", runs,
              "--no-progress", "--set", "output.report=false"]
    done = run_cli("train", *common, "--epochs", "2", "--name", "done")
    assert done.returncode == 0, done.stderr
    status = json.loads((runs / "done" / "status.json").read_text())
    assert status["status"] == "finished" and status["started"] <= status["updated"]
    failed = run_cli("train", *common, "--epochs", "1", "--lr", "1e30", "--set", "train.grad_clip=0",
                     "--precision", "fp32", "--name", "failed")
    assert failed.returncode == 1
    assert json.loads((runs / "failed" / "status.json").read_text())["status"] == "failed"
    evaluated = run_cli("evaluate", runs / "done" / "best.safetensors", "fashion-mnist", "--data-root", fake_mnist,
                        "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    # A run killed while training (its process is gone) and one that trains now (its process is alive):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    shutil.copytree(runs / "done", runs / "killed")
    _status(runs / "killed", status="running", pid=int(gone.stdout))
    shutil.copytree(runs / "done", runs / "training")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _status(runs / "training", status="running", pid=live.pid)
        (runs / "notes").mkdir()  # not a run: named and skipped
        listed = run_cli("runs", runs, "--json")
        table = run_cli("runs", runs, "--sort", "name")
    finally:
        live.kill()
    assert listed.returncode == 0, listed.stderr
    answer = json.loads(listed.stdout)
    by_name = {r["name"]: r for r in answer["runs"]}
    assert {n: r["status"] for n, r in by_name.items()} == {"done": "finished", "failed": "failed",
                                                             "killed": "interrupted", "training": "running"}
    assert answer["skipped"] == ["notes"]
    d = by_name["done"]
    assert (d["epochs"], d["planned"], d["model"], d["data"]) == (2, 2, "vit_micro_patch7_28", "fashion-mnist")
    assert d["test"] == json.loads(evaluated.stdout)["top1"] and 0 < d["best_val"] <= 1 and d["seconds"] > 0
    assert "non-finite" in by_name["failed"]["error"] and by_name["failed"]["test"] is None
    rows = [line.split("│")[1].strip() for line in table.stdout.splitlines() if line.startswith("│")]
    rows = [name for name in rows if name]  # a long cell wraps onto lines of its own
    assert table.returncode == 0 and rows == ["done", "failed", "killed", "training"], table.stdout
    assert "not vitkit runs (no config.yaml), skipped: notes" in table.stdout
    # runs compare: curves overlaid, configs side by side with the differences marked, in a real browser
    compared = run_cli("runs", "compare", runs / "done", runs / "failed", "--out", tmp_path / "cmp", "--json")
    assert compared.returncode == 0, compared.stderr
    page = Path(json.loads(compared.stdout)["page"])
    assert {Path(p).name for p in json.loads(compared.stdout)["figures"]} == {"loss.png", "top1.png", "lr.png",
                                                                            "speed.png"}
    html = page.read_text()
    for key in ("train.epochs", "train.lr", "output.name"):  # what the two runs' configs differ in
        assert f'<tr class="diff"><td>{key}</td>' in html
    assert '<tr class="diff"><td>model.name</td>' not in html and '<tr class="same"><td>model.name</td>' in html
    figures, loaded = render_in_chromium(page)
    assert figures == 4 and loaded == figures
    one = run_cli("runs", "compare", runs / "done")
    assert one.returncode == 2 and "at least two run directories" in one.stderr
    notes = run_cli("runs", "compare", runs / "done", runs / "notes")
    assert notes.returncode == 2 and "notes is not a vitkit run directory" in notes.stderr


def test_runs_from_before_status_files_are_judged_by_their_epochs_and_sorted(tmp_path):
    for name, done, planned, best in (("a", 3, 3, 0.8), ("b", 1, 3, 0.9), ("c", 2, 2, "")):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(f"model:\n  name: m\ndata:\n  source: d\ntrain:\n  epochs: {planned}\n")
        rows = "".join(f"{e},{best},,1.5\n" for e in range(1, done + 1))
        (run / "metrics.csv").write_text("epoch,val_top1,val_top1_ema,seconds\n" + rows)
    runs, skipped = list_runs(tmp_path, sort="best_val")
    assert [(r.name, r.status, r.epochs) for r in runs] == [("b", "interrupted", 1), ("a", "finished", 3),
                                                            ("c", "finished", 2)]  # no validation: last
    assert runs[1].seconds == 4.5 and skipped == []
    one, _ = list_runs(tmp_path / "a")
    assert [r.name for r in one] == ["a"]
    bad = run_cli("runs", tmp_path / "missing")
    assert bad.returncode == 2 and "is not a folder" in bad.stderr
