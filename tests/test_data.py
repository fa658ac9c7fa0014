"""Data sources: image folders, named datasets from their standard files, downloads, decoding, splits."""
import http.server
import os
import pickle
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import load_data, load_image, read_manifest, write_manifest
from vitkit.data import named
from vitkit.data.splits import stratified_split
from vitkit.data.images import BadImage, to_mode
from vitkit.errors import DataError, UserError

from .conftest import write_folder


def test_folder_is_split_stratified_and_reproducibly(image_folder):
    a = load_data(str(image_folder), img_size=16, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = load_data(str(image_folder), img_size=16, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert a.classes == ["ankle", "bag", "coat"]  # hidden folders are never classes
    # 30 good images per class (+1 broken in bag): 6 val and 3 test per class, the broken one skipped
    assert sum(len(s) for s in a.splits.values()) == 90
    for split, per_class in (("val", 6), ("test", 3)):
        counts = torch.bincount(a.splits[split].labels, minlength=3).tolist()
        assert all(per_class - 1 <= c <= per_class for c in counts), counts
    assert a.splits["val"].ids == b.splits["val"].ids
    assert not set(a.splits["train"].ids) & set(a.splits["val"].ids)
    assert a.bad_files == [("bag/broken.jpg", a.bad_files[0][1])]  # reported, with a reason
    assert a.channels == 3 and a.splits["train"].images.shape[1:] == (3, 16, 16)


def test_manifest_is_reused_instead_of_a_new_split(image_folder, tmp_path):
    first = load_data(str(image_folder), img_size=16, val_fraction=0.2, seed=0)
    manifest = tmp_path / "split.csv"
    write_manifest(manifest, first.manifest)
    again = load_data(str(image_folder), img_size=16, val_fraction=0.5, seed=99, manifest=manifest)
    assert again.splits["val"].ids == first.splits["val"].ids
    assert read_manifest(manifest)[0][2] in ("train", "val")


def test_train_val_folders_are_used_as_given(tmp_path):
    write_folder(tmp_path / "d" / "train", per_class=4)
    write_folder(tmp_path / "d" / "val", per_class=2, seed=1)
    data = load_data(str(tmp_path / "d"), img_size=16)
    assert len(data.splits["train"]) == 12 and len(data.splits["val"]) == 6
    assert all(i.startswith("val/") for i in data.splits["val"].ids)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "nope"), img_size=16)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class subfolders"):
        load_data(str(tmp_path / "flat"), img_size=16)
    write_folder(tmp_path / "e", per_class=3)
    (tmp_path / "e" / "dress").mkdir()
    with pytest.raises(DataError, match="empty class folder.*dress.*--allow-empty-classes"):
        load_data(str(tmp_path / "e"), img_size=16)
    data = load_data(str(tmp_path / "e"), img_size=16, allow_empty_classes=True)
    assert data.classes == ["ankle", "bag", "coat", "dress"]  # indices of the other classes do not shift


def test_named_dataset_from_idx_files(fake_mnist):
    data = load_data("fashion-mnist", data_root=str(fake_mnist), val_fraction=0.1, seed=0)
    assert data.classes[0] == "T-shirt/top" and data.channels == 1 and data.img_size == 28
    assert len(data.splits["train"]) == 540 and len(data.splits["val"]) == 60 and len(data.splits["test"]) == 200
    assert data.splits["val"].ids[0].startswith("train:") and data.splits["test"].ids[0] == "test:0"
    resized = load_data("fashion-mnist", data_root=str(fake_mnist), img_size=32, channels=3, splits=("test",))
    assert resized.splits["test"].images.shape == (200, 3, 32, 32) and list(resized.splits) == ["test"]


def test_missing_named_dataset_says_where_to_put_which_files(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path / "user"))
    monkeypatch.setitem(named.DATASETS, "mnist", named.DATASETS["mnist"].__class__(
        **{**named.DATASETS["mnist"].__dict__, "base_url": "http://127.0.0.1:9/"}))
    with pytest.raises(DataError, match=r"download failed.*download train-images-idx3-ubyte.gz.*t10k-labels-idx1-ubyte.gz from .* and put them in \S*root/mnist "):
        load_data("mnist", data_root=str(tmp_path / "root"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_checks_the_md5_and_never_leaves_a_bad_file(file_server, tmp_path):
    served, url = file_server
    (served / "a.bin").write_bytes(b"hello")
    named.download_file(url + "a.bin", tmp_path / "a.bin", named.md5sum(served / "a.bin"))
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    with pytest.raises(DataError, match="checksum mismatch"):
        named.download_file(url + "a.bin", tmp_path / "b.bin", "0" * 32)
    assert not list(tmp_path.glob("b.bin*"))


def test_download_has_a_size_cap_and_a_partial_file_of_its_own(file_server, tmp_path, monkeypatch):
    served, url = file_server
    (served / "big.bin").write_bytes(b"x" * 5000)
    with pytest.raises(DataError, match="larger than 4,096 bytes"):
        named.download_file(url + "big.bin", tmp_path / "big.bin", "0" * 32, max_bytes=4096)
    assert not list(tmp_path.glob("big.bin*"))
    seen = []
    real_open = open

    def spying_open(path, *args, **kwargs):
        seen.append(Path(path).name)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr("builtins.open", spying_open)
    named.download_file(url + "big.bin", tmp_path / "big.bin", named.md5sum(served / "big.bin"))
    assert f"big.bin.{os.getpid()}.part" in seen  # two ranks downloading at once never share one


def test_an_archive_already_there_is_extracted_only_with_the_right_md5(file_server, tmp_path, monkeypatch):
    import io
    import tarfile

    served, url = file_server
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    (served / "data.tar.gz").write_bytes(buffer.getvalue())
    spec = named.DATASETS["cifar10"]
    monkeypatch.setitem(named.DATASETS, "cifar10", spec.__class__(**{
        **spec.__dict__, "base_url": url, "files": {"data.tar.gz": named.md5sum(served / "data.tar.gz")}}))
    target = tmp_path / "cifar10"
    target.mkdir()
    with tarfile.open(target / "data.tar.gz", "w:gz") as tar:  # an archive someone left there: not the official one
        info = tarfile.TarInfo("planted.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    named.fetch("cifar10", target)
    assert (target / "hello.txt").read_text() == "hello" and not (target / "planted.txt").exists()


def test_named_dataset_is_downloaded_when_missing(file_server, fake_mnist, tmp_path, monkeypatch):
    served, url = file_server
    files = {}
    for f in sorted((fake_mnist / "fashion-mnist").iterdir()):
        (served / f.name).write_bytes(f.read_bytes())
        files[f.name] = named.md5sum(f)
    spec = named.DATASETS["mnist"]
    monkeypatch.setitem(named.DATASETS, "mnist", spec.__class__(**{**spec.__dict__, "base_url": url, "files": files}))
    monkeypatch.setenv("VITKIT_DATA", str(tmp_path / "user"))
    data = load_data("mnist", splits=("test",))
    assert len(data.splits["test"]) == 200
    assert (tmp_path / "user" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()


def _cifar_batch(n, rng, key="labels"):
    return {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), key.encode(): list(rng.integers(0, 10, n)),
            b"batch_label": b"x"}


def test_cifar10_pickles_are_read_without_running_code(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "cifar10" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for i in range(1, 6):
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(10, rng), protocol=2))
    (base / "test_batch").write_bytes(pickle.dumps(_cifar_batch(10, rng), protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    data = load_data("cifar10", data_root=str(tmp_path), val_fraction=0.2)
    assert data.classes[3] == "c3" and data.splits["test"].images.shape == (10, 3, 32, 32)
    assert len(data.splits["train"]) + len(data.splits["val"]) == 50

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (base / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load"):
        load_data("cifar10", data_root=str(tmp_path), splits=("test",))
    assert not (tmp_path / "pwned").exists()


def test_decoding_applies_exif_orientation_and_scales_16_bit(tmp_path):
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    arr = load_image(tmp_path / "r.jpg", 20, 1)[0].astype(float)  # displayed 20x40 (portrait) -> centre crop
    assert arr.shape == (20, 20)
    # Turned clockwise, the white left half is the top: the crop's top rows are bright, its bottom rows dark, and
    # every column alike (unturned, the crop would be bright on the left instead).
    assert arr[:8].mean() > 220 and arr[-8:].mean() < 35
    assert abs(arr[:, :8].mean() - arr[:, -8:].mean()) < 10
    wide = np.asarray(Image.open(tmp_path / "r.jpg").convert("L").transpose(Image.Transpose.ROTATE_270))
    assert wide.shape == (40, 20)  # the decoder turned the image the way the viewer does
    sixteen = Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16))
    assert sixteen.mode.startswith("I")
    out = np.asarray(to_mode(sixteen, 1))
    assert out.max() == 255 and out.min() == 0 and 0 < out[0, 1] < out[1, 0] < 255  # scaled, not clipped
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert np.asarray(to_mode(rgba, 3)).max() == 0  # transparent composited on black
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadImage, match="empty file"):
        load_image(tmp_path / "empty.png", 8, 3)


def test_stratified_split_keeps_a_training_image_per_class():
    labels = np.array([0] * 10 + [1] * 2 + [2])
    parts = stratified_split(labels, {"val": 0.2}, seed=0)
    assert sorted(np.concatenate([parts["train"], parts["val"]]).tolist()) == list(range(13))
    assert set(labels[parts["train"]]) == {0, 1, 2}


def test_a_folder_with_train_and_test_but_no_val_holds_val_out_of_train(tmp_path):
    from collections import Counter

    from tests.conftest import write_folder
    from vitkit.data.splits import assign_splits
    from vitkit.data.folder import list_folder

    write_folder(tmp_path / "d" / "train", per_class=20)
    write_folder(tmp_path / "d" / "test", per_class=5, seed=1)
    scan = list_folder(tmp_path / "d")
    assert scan.has_splits and scan.classes == ["ankle", "bag", "coat"]
    rows = assign_splits(scan, 0.1, 0.0, seed=0)
    assert Counter(s for _, _, s in rows) == {"train": 54, "val": 6, "test": 15}
    assert all(p.startswith("test/") for p, _, s in rows if s == "test")
    assert all(p.startswith("train/") for p, _, s in rows if s == "val")
    assert rows == assign_splits(scan, 0.1, 0.0, seed=0)  # seeded


def test_decoded_folders_are_cached_by_content(tmp_path, monkeypatch, caplog):
    import logging

    from tests.conftest import write_folder
    from vitkit.data import load_data

    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "photos", per_class=12)
    (root / "bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    first = load_data(str(root), img_size=16, seed=0)
    with caplog.at_level(logging.INFO, logger="vitkit"):
        second = load_data(str(root), img_size=16, seed=0)
    assert "decoded images from the cache" in caplog.text
    for split in first.splits:
        assert torch.equal(first.splits[split].images, second.splits[split].images)
        assert torch.equal(first.splits[split].labels, second.splits[split].labels)
        assert first.splits[split].ids == second.splits[split].ids
    assert second.bad_files == first.bad_files and [p for p, _ in first.bad_files] == ["bag/broken.png"]
    changed = first.splits["train"].ids[0]
    Image.new("RGB", (20, 24), (255, 0, 0)).save(root / changed)  # same name, new content: decoded again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitkit"):
        third = load_data(str(root), img_size=16, seed=0)
    assert "train: " not in caplog.text and "val: 3 decoded images from the cache" in caplog.text
    assert not torch.equal(third.splits["train"].images, first.splits["train"].images)
    assert len(list((tmp_path / "cache").iterdir())) == 3  # train and val, then the new train
    other_size = load_data(str(root), img_size=8, seed=0)
    assert other_size.splits["train"].images.shape[-1] == 8
    assert load_data(str(root), img_size=16, seed=0, use_cache=False).splits["val"].images.shape[0] > 0


def test_a_damaged_cache_entry_is_removed_and_decoded_again(tmp_path, monkeypatch, caplog):
    import logging

    from tests.conftest import write_folder

    monkeypatch.setenv("VITKIT_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "photos", per_class=12)
    first = load_data(str(root), img_size=16, seed=0)
    entries = sorted((tmp_path / "cache").iterdir(), key=lambda p: p.stat().st_size)
    assert len(entries) == 2 and not list((tmp_path / "cache").glob(".*"))  # no temporary folder left
    arrays = [e / "images.npy" for e in entries]
    arrays[0].write_bytes(arrays[0].read_bytes()[:-100])  # cut short (a crash before the data reached the disk)
    (entries[1] / "meta.json").write_text("{")
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        second = load_data(str(root), img_size=16, seed=0)
    assert caplog.text.count("is damaged") == 2 and "decoded again" in caplog.text
    for split in first.splits:
        assert torch.equal(first.splits[split].images, second.splits[split].images)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vitkit"):
        load_data(str(root), img_size=16, seed=0)
    assert caplog.text.count("decoded images from the cache") == 2  # healed: written anew


def test_decoding_shows_no_progress_bar_off_a_terminal(tmp_path, capsys):
    """Logs and CI get no bar (it once printed hundreds of redraws into `--no-progress` logs); the caller can
    also turn it off."""
    from vitkit.data.folder import decode_all

    for i in range(520):
        Image.fromarray(np.full((8, 8), i % 256, np.uint8)).save(tmp_path / f"{i:03d}.png")
    paths = sorted(p.name for p in tmp_path.iterdir())
    for show in (True, False):
        arrays, bad = decode_all(tmp_path, paths, 8, 1, show_progress=show)
        assert len(arrays) == 520 and not bad
        assert "decoding" not in capsys.readouterr().err


def test_normalization_statistics_are_exact_and_need_no_float_copy_of_the_images():
    """`folder_stats` matches a float64 reference, and summing in chunks keeps its memory flat: the whole sample
    as floats took 12 GB for 9,000 RGB images of 224 px."""
    from vitkit.data.dataset import folder_stats
    from vitkit.data.splits import ImageSet

    images = torch.randint(0, 256, (70, 3, 9, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = images.numpy().astype(np.float64) / 255.0
    mean, std = folder_stats(ImageSet(images, torch.zeros(70, dtype=torch.long), [""] * 70), 3, chunk=8)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), atol=6e-5)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3), ddof=1), atol=6e-5)

    script = (
        "import resource, torch\n"
        "from vitkit.data.dataset import folder_stats\n"
        "from vitkit.data.splits import ImageSet\n"
        "images = torch.randint(0, 256, (1500, 3, 224, 224), dtype=torch.uint8)\n"  # 226 MB, written, so resident
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "folder_stats(ImageSet(images, torch.zeros(1500, dtype=torch.long), [''] * 1500), 3)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(run.stdout) < 400, f"peak memory grew by {run.stdout.strip()} MB"  # 40-100 MB; as floats: +1.8 GB


def test_the_training_split_can_be_decoded_larger_than_the_model_input(image_folder, fake_mnist):
    """`decode_scale`: training images at 1.5x (for crops resampled to the input size), validation at the input
    size, the same split; named datasets are used at their own size and refuse it in one line."""
    data = load_data(str(image_folder), img_size=16, val_fraction=0.2, seed=0, decode_scale=1.5, use_cache=False)
    assert data.img_size == 16
    assert data.splits["train"].images.shape[1:] == (3, 24, 24) and data.splits["val"].images.shape[1:] == (3, 16, 16)
    same = load_data(str(image_folder), img_size=16, val_fraction=0.2, seed=0, use_cache=False)
    assert data.splits["train"].ids == same.splits["train"].ids  # the same split, only the size differs
    with pytest.raises(UserError, match="decode_scale applies to image folders and label files"):
        load_data("fashion-mnist", data_root=str(fake_mnist), decode_scale=1.5)
