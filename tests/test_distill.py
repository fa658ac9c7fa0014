"""Distillation (DeiT): the losses, the two heads, teachers from vitkit and timm, exact resume, one-line errors."""
import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import vitkit
from tests.conftest import TINY_MODEL, run_cli
from tests.test_train import _interrupt_after, config
from vitkit.data import Augment, BatchLoader, ImageSet
from vitkit.engine.distill import Distiller, Teacher, cache_teacher, distillation_loss


def test_distillation_losses_are_the_hand_computed_ones():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    hard = -sum(torch.log_softmax(student[i], 0)[teacher[i].argmax()] for i in range(4))
    torch.testing.assert_close(distillation_loss(student, teacher, "hard"), hard)
    tau = 3.0
    p, q = torch.softmax(teacher / tau, 1), torch.softmax(student / tau, 1)
    soft = tau ** 2 * (p * (p.log() - q.log())).sum()
    torch.testing.assert_close(distillation_loss(student, teacher, "soft", tau), soft)


class Fixed(torch.nn.Module):
    """A teacher whose logits are given (by the first pixel of each image)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return F.one_hot(x[:, 0, 0, 0].round().long() % self.num_classes, self.num_classes).float() * 10 * self.scale


def _teacher(num_classes=3):
    return Teacher(Fixed(num_classes), "fixed", None, num_classes, (0.0,), (1.0,), 1, None)


def test_the_loss_mixes_label_and_teacher_terms_and_reads_the_distillation_head():
    distiller = Distiller(_teacher(), (0.0,), (1.0,), "hard", alpha=0.25)
    x = torch.zeros(2, 1, 4, 4)
    x[1, 0, 0, 0] = 2.0  # the teacher says class 0 for the first image, class 2 for the second
    cls, dist = torch.randn(2, 3), torch.randn(2, 3)
    labels = torch.tensor([1, 1])
    got = distiller.loss((cls, dist), x, lambda logits: F.cross_entropy(logits, labels, reduction="sum"))
    want = 0.75 * F.cross_entropy(cls, labels, reduction="sum") + 0.25 * F.cross_entropy(
        dist, torch.tensor([0, 2]), reduction="sum")
    torch.testing.assert_close(got, want)


def test_a_teacher_that_disagrees_with_the_labels_pulls_the_student():
    """Labels say class (k + 1) % 3 where the teacher says k: with alpha 0.9 the student follows the teacher."""
    torch.manual_seed(0)
    k = torch.randint(0, 3, (300,))
    x = k.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    labels = (k + 1) % 3
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    distiller = Distiller(_teacher(), (0.0,), (1.0,), "soft", alpha=0.9, tau=2.0)
    for _ in range(200):
        optimizer.zero_grad()
        loss = distiller.loss(student(x), x, lambda z: F.cross_entropy(z, labels, reduction="sum"))
        loss.backward()
        optimizer.step()
    predicted = student(x).argmax(1)
    assert (predicted == k).float().mean() > 0.95 and (predicted == labels).float().mean() < 0.05


def _linear_distiller():
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    return Distiller(Teacher(linear, "linear", None, 3, (0.5,), (0.25,), 1, None), (0.5,), (0.25,))


def test_cached_teacher_logits_are_those_of_each_augmented_view():
    """Flips only, with random erasing: the teacher's logits of every unerased image come from the cache and equal
    those it computes on the batch the loader made; erased images are shown to it live."""
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(64) % 3,
                    [str(i) for i in range(64)])
    loader = BatchLoader(data, 16, (0.5,), (0.25,), torch.device("cpu"), shuffle=True,
                         augment=Augment(scale=(1.0, 1.0), erase=0.3))
    distiller = _linear_distiller()
    assert cache_teacher(distiller, loader, epochs=3, batch_size=16)
    assert distiller.cache.shape == (128, 3)
    live = mirrored = 0
    for seed in (1, 2):
        loader.set_epoch_seed(seed)
        for batch in loader:
            live += int((batch.views < 0).sum())
            mirrored += int((batch.views % 2 == 1).sum())
            torch.testing.assert_close(distiller.batch_logits(batch.x, batch.views), distiller.teacher_logits(batch.x))
    assert 0 < live < 128 and 0 < mirrored < 128
    cropping = BatchLoader(data, 16, (0.5,), (0.25,), torch.device("cpu"), shuffle=True,
                           augment=Augment(scale=(0.8, 1.0)))
    distiller = _linear_distiller()
    assert not cache_teacher(distiller, cropping, epochs=3, batch_size=16)
    assert distiller.cache is None and next(iter(cropping)).views is None


@pytest.fixture(scope="module")
def teacher(fake_mnist, tmp_path_factory):
    """A vitkit checkpoint trained one epoch on the fake Fashion-MNIST."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = config(out, "fashion-mnist", str(fake_mnist), **{"train.epochs": 1, "output.name": "teacher",
                                                            "output.report": False})
    return vitkit.train(cfg, show_progress=False).best_checkpoint


def test_distilling_from_a_vitkit_teacher_through_the_cli_trains_both_heads(fake_mnist, teacher, tmp_path):
    student = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--epochs", "1", "--out",
                      tmp_path, "--name", "student", "--no-progress", "--set", "output.report=false",
                      "--teacher", teacher, "--set", "model.dist_token=true",
                      "--img-size", "20", "--set", "model.patch_size=4")
    assert student.returncode == 0, student.stderr
    assert "into the distillation head" in student.stderr
    assert "resized to the teacher's 16 px" in student.stderr
    saved = load_file(tmp_path / "student" / "best.safetensors")
    assert "head_dist.weight" in saved and "dist_token" in saved
    evaluation = run_cli("evaluate", tmp_path / "student" / "best.safetensors", "fashion-mnist", "--data-root",
                         fake_mnist, "--json")
    assert evaluation.returncode == 0, evaluation.stderr


def test_a_timm_teacher_with_local_weights(fake_mnist, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    weights = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet10t", num_classes=10).state_dict().items()},
              weights)
    cfg = config(tmp_path, "fashion-mnist", str(fake_mnist), **{"train.epochs": 1, "output.name": "timm",
                                                                 "output.report": False,
                                                                 "train.teacher": "timm:resnet10t",
                                                                 "train.teacher_weights": str(weights)})
    result = vitkit.train(cfg, show_progress=False)
    assert result.epochs == 1 and (result.run_dir / "best.safetensors").is_file()


def test_resuming_a_distillation_run_is_exact(fake_mnist, teacher, tmp_path, monkeypatch, caplog):
    """With the teacher's logits cached (flips and erasing only), computed again in the resumed process."""
    extra = {"train.epochs": 2, "output.report": False, "train.teacher": str(teacher),
             "model.dist_token": True, "train.distill": "soft", "train.distill_tau": 2.0,
             "data.crop_scale": [1.0, 1.0], "data.policy": "none", "data.erase": 0.25}
    caplog.set_level(logging.INFO, logger="vitkit")
    whole = vitkit.train(config(tmp_path, "fashion-mnist", str(fake_mnist), **{**extra, "output.name": "whole"}),
                         show_progress=False)
    with monkeypatch.context() as m:
        _interrupt_after(1, m)
        with pytest.raises(KeyboardInterrupt):
            vitkit.train(config(tmp_path, "fashion-mnist", str(fake_mnist), **{**extra, "output.name": "cut"}),
                         show_progress=False)
    run = tmp_path / "runs" / "cut"
    resumed = vitkit.train(vitkit.engine.train.resume_config(run), resume=run, show_progress=False)
    a, b = load_file(whole.run_dir / "last.safetensors"), load_file(resumed.run_dir / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert caplog.text.count("as they are and mirrored, computed once") == 3


@pytest.mark.parametrize("teacher, message", [
    ("missing.safetensors", "teacher missing.safetensors does not exist"),
    ("timm:no_such_model_x", "timm has no model 'no_such_model_x'"),
])
def test_teacher_mistakes_are_one_line_errors(fake_mnist, tmp_path, teacher, message):
    r = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--epochs", "1", "--out", tmp_path,
                "--no-progress", "--teacher", teacher)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_teacher_of_other_classes_names_both_lists(fake_mnist, image_folder, tmp_path):
    t = run_cli("train", image_folder, *TINY_MODEL, "--epochs", "1", "--out", tmp_path, "--name", "t",
                "--no-progress", "--set", "output.report=false")
    assert t.returncode == 0, t.stderr
    r = run_cli("train", "fashion-mnist", "--data-root", fake_mnist, *TINY_MODEL, "--epochs", "1", "--out", tmp_path,
                "--no-progress", "--teacher", tmp_path / "t" / "best.safetensors")
    assert r.returncode == 2 and "knows the classes ankle, bag, coat" in r.stderr, r.stderr
    assert "the data has T-shirt/top" in r.stderr
