"""Sharded data: `vitkit data shard` writes WebDataset tars; training streams them; evaluation reads them."""
import json
import tarfile

import torch

from vitkit.data.loader import ShardLoader
from vitkit.data.shards import ShardSet, read_index

from .conftest import TINY_MODEL, run_cli, write_folder


def test_shard_train_and_evaluate(tmp_path):
    folder = write_folder(tmp_path / "photos", per_class=30)
    (folder / "bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = run_cli("data", "shard", folder, tmp_path / "shards", "--shard-size", "16", "--val-fraction", "0.2")
    assert out.returncode == 0, out.stderr
    assert "train: 72 images in 5 shard(s)" in out.stdout and "left out: 1 unreadable" in out.stdout
    index = read_index(tmp_path / "shards")
    assert index["classes"] == ["ankle", "bag", "coat"] and index["bad_files"][0][0] == "bag/broken.png"
    assert sum(index["splits"]["train"]["class_counts"]) == 72 and index["splits"]["val"]["count"] == 18
    members, first_shard_classes = [], set()
    for k, name in enumerate(index["splits"]["train"]["shards"]):
        with tarfile.open(tmp_path / "shards" / name) as tar:
            for m in tar.getmembers():
                members.append(m.name)
                if k == 0 and m.name.endswith(".cls"):
                    first_shard_classes.add(tar.extractfile(m).read())
    assert len(members) == 3 * 72 and members[1:3] == ["00000000.cls", "00000000.id"]
    assert members[0] in ("00000000.png", "00000000.jpg") and len(first_shard_classes) == 3  # shuffled across shards

    again = run_cli("data", "shard", folder, tmp_path / "shards")
    assert again.returncode == 2 and "already holds shards" in again.stderr

    run = run_cli("train", tmp_path / "shards", *TINY_MODEL, "--epochs", "4", "--batch-size", "16", "--lr", "3e-3",
                  "--out", tmp_path / "runs", "--name", "s", "--no-progress", "--set", "data.workers=1")
    assert run.returncode == 0, run.stderr
    assert "streamed from disk" in run.stderr
    ev = run_cli("evaluate", tmp_path / "runs" / "s" / "best.safetensors", tmp_path / "shards", "--format", "json")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["split"] == "val" and report["top1"] >= 0.9, report["top1"]  # the same data in memory: 0.95+


def test_shard_loader_gives_every_process_the_same_number_of_batches_from_disjoint_shards(tmp_path):
    folder = write_folder(tmp_path / "photos", per_class=20)
    assert run_cli("data", "shard", folder, tmp_path / "shards", "--shard-size", "10").returncode == 0
    info = read_index(tmp_path / "shards")["splits"]["train"]
    data = ShardSet(tmp_path / "shards", info["shards"], info["count"], info["class_counts"], 16, 3, 3)
    shard_of = {}  # each image's pixels -> the shard that holds it
    for name in info["shards"]:
        one = ShardSet(tmp_path / "shards", [name], 0, info["class_counts"], 16, 3, 3).decode()
        shard_of.update({bytes(image.numpy()): name for image in one.images})
    assert len(shard_of) == info["count"] == 54  # every training image distinct, so it can be traced to its shard
    read_by = []
    for rank in range(2):
        loader = ShardLoader(data, 8, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), rank=rank, world_size=2, workers=0)
        loader.set_epoch_seed(1)
        batches = list(loader)
        assert len(batches) == len(loader) == 54 // 8 and all(b.x.shape == (4, 3, 16, 16) for b in batches)
        pixels = (torch.cat([b.x for b in batches]) * 0.25 * 255 + 0.5 * 255).round().to(torch.uint8)
        keys = [bytes(image.numpy()) for image in pixels]
        assert len(set(keys)) == len(keys) == 24 and all(k in shard_of for k in keys)  # no image twice in a pass
        read_by.append({shard_of[k] for k in keys})
        loader.set_epoch_seed(1)
        resumed = list(loader.batches(start=3))
        torch.testing.assert_close(torch.cat([b.x for b in resumed]), torch.cat([b.x for b in batches[3:]]))
    assert not read_by[0] & read_by[1]  # each shard is read by one process
    assert read_by[0] | read_by[1] <= set(info["shards"]) and len(read_by[0] | read_by[1]) >= 5  # 48 of 54 images


def test_a_shard_sample_with_a_label_out_of_range_is_skipped_with_a_warning(tmp_path):
    import io

    folder = write_folder(tmp_path / "photos", per_class=4)
    assert run_cli("data", "shard", folder, tmp_path / "shards", "--val-fraction", "0.25").returncode == 0
    index = read_index(tmp_path / "shards")
    name = index["splits"]["val"]["shards"][0]
    with tarfile.open(tmp_path / "shards" / name) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tmp_path / "shards" / name, "w") as tar:  # the first sample now claims class 7 of 3
        for k, (member, data) in enumerate(members):
            data = b"7" if k == 1 else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    decoded = ShardSet(tmp_path / "shards", [name], 0, index["splits"]["val"]["class_counts"], 16, 3, 3).decode()
    assert len(decoded) == index["splits"]["val"]["count"] - 1 and int(decoded.labels.max()) < 3
    model = tmp_path / "m.safetensors"
    from tests.serving import make_checkpoint
    make_checkpoint(model)  # classes ankle, bag, coat, like the folder's
    ev = run_cli("evaluate", model, tmp_path / "shards", "--format", "json")
    assert ev.returncode == 0 and "label 7 is not one of the index's 3 classes" in ev.stderr, ev.stderr
    index_file = tmp_path / "shards" / "dataset.json"
    damaged = json.loads(index_file.read_text())
    damaged["classes"] = damaged["classes"][:2]
    index_file.write_text(json.dumps(damaged))
    bad = run_cli("evaluate", model, tmp_path / "shards")
    assert bad.returncode == 2 and "classes and class counts do not agree" in bad.stderr
