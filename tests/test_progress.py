"""Progress without a terminal: a line every `output.progress_every` seconds, with the step, rate and time left."""
import logging

from vitkit.engine.progress import EpochProgress

from .conftest import TINY_MODEL, run_cli


def test_lines_come_every_n_seconds_with_step_rate_and_time_left(caplog):
    now = [0.0]
    progress = EpochProgress(2, 5, total=10, first=0, bar=False, lines=True, every=30.0, terminal=False,
                             clock=lambda: now[0])
    asked = []

    def stats():
        asked.append(1)
        return 0.5, 0.75

    with caplog.at_level(logging.INFO, logger="vitkit"):
        for step, t in enumerate([10, 20, 31, 40, 50, 62, 70, 80, 90, 100]):
            now[0] = float(t)
            progress.step(step, images=32 * (step + 1), stats=stats)
    progress.close()
    lines = [r.getMessage() for r in caplog.records if "left in the epoch" in r.getMessage()]
    assert lines == ["epoch 2/5  step 3/10  loss 0.5000 acc 0.750  3 img/s, 1m12s left in the epoch",
                     "epoch 2/5  step 6/10  loss 0.5000 acc 0.750  3 img/s, 41s left in the epoch",
                     "epoch 2/5  step 10/10  loss 0.5000 acc 0.750  3 img/s, 0s left in the epoch"]  # t = 31, 62, 100
    assert len(asked) == 3  # loss and accuracy are read (a device sync) only for a line


def test_a_terminal_gets_the_bar_and_no_lines_and_zero_turns_lines_off(caplog):
    with caplog.at_level(logging.INFO, logger="vitkit"):
        for terminal, every in ((True, 30.0), (False, 0.0)):
            now = [0.0]
            progress = EpochProgress(1, 1, total=3, first=0, bar=True, lines=True, every=every, terminal=terminal,
                                     clock=lambda: now[0])
            for step in range(3):
                now[0] += 100.0
                progress.step(step, images=step + 1, stats=lambda: (1.0, 0.5))
            assert progress.bar.disable is (not terminal)
            progress.close()
    assert "left in the epoch" not in caplog.text


def test_training_in_a_log_prints_progress_lines(fake_mnist, tmp_path):
    r = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--epochs", "1", "--batch-size",
                "64", "--out", tmp_path, "--no-progress", "--set", "output.progress_every=1e-9",
                "--set", "output.report=false")
    assert r.returncode == 0, r.stderr
    steps = [line for line in r.stderr.splitlines() if "left in the epoch" in line]
    assert len(steps) == 8 and steps[0].startswith("epoch 1/1  step 1/8  loss ") and "img/s" in steps[0]
    assert steps[-1].startswith("epoch 1/1  step 8/8") and steps[-1].endswith("0s left in the epoch")
