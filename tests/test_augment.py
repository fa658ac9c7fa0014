"""Batched augmentation, mixing and the loader's global batches: shapes, references (PIL), seeds, invariances."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from vitkit.data import Augment, BatchLoader, ImageSet, Mix, Normalize
from vitkit.data.augment import COLOUR_OPS, MAX_LEVEL, OPS

IDENTITY = Normalize((0.0,), (1 / 255,), torch.device("cpu"))  # pixels stay in [0, 255]


def images(n=12, c=1, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def dataset(n=50, classes=5, c=1, size=8):
    return ImageSet(images(n, c, size), torch.arange(n) % classes, [str(i) for i in range(n)])


def test_full_crop_without_flip_is_identity_and_flip_mirrors():
    """At crop scale 1 the aspect range cannot apply (the crop would not fit): each image is itself or its mirror."""
    x = images(40)
    plain = Augment(scale=(1.0, 1.0), hflip=0.0)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(plain.apply(x, plain.draw(len(x), g), IDENTITY), x.float())
    flip = Augment(scale=(1.0, 1.0), hflip=1.0)
    torch.testing.assert_close(flip.apply(x, flip.draw(len(x), g), IDENTITY), x.float().flip(-1), atol=1e-3, rtol=0)
    either = Augment(scale=(1.0, 1.0), hflip=0.5)
    p = either.draw(len(x), g)
    out = either.apply(x, p, IDENTITY)
    mirrored, exact = either.view_keys(p)
    assert exact.all() and 0 < int(mirrored.sum()) < len(x)
    torch.testing.assert_close(out, torch.where(mirrored.bool().view(-1, 1, 1, 1), x.float().flip(-1), x.float()),
                               atol=1e-3, rtol=0)
    for m in (False, True):
        torch.testing.assert_close(either.view(x, m, IDENTITY), x.float().flip(-1) if m else x.float(), atol=1e-3,
                                   rtol=0)


def crop_extents(crop: Augment, n: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The share of the width and of the height each of `n` drawn crops spans, from the range of the ramp it samples
    (images whose pixels hold their column, or their row)."""
    ramp = (torch.arange(size) * 4).to(torch.uint8)
    columns = ramp.view(1, 1, 1, size).expand(n, 1, size, size).contiguous()  # each pixel: its column
    rows = columns.transpose(2, 3).contiguous()  # each pixel: its row
    p = crop.draw(n, torch.Generator().manual_seed(0))

    def extent(x):
        out = crop.apply(x, p, IDENTITY)
        return (out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))) / 4 / (size - 1)

    return extent(columns), extent(rows)


def test_random_resized_crops_keep_their_drawn_area():
    """The aspect is drawn where a crop of the drawn area fits, so no side is clamped and the area holds."""
    w, h = crop_extents(Augment(scale=(0.9, 0.9), hflip=0.0), 300)
    area = w * h
    assert float(area.min()) > 0.87 and float(area.max()) < 0.93


def test_crop_stretch_at_full_scale_stretches_one_axis_by_at_most_its_factor():
    """data.crop_stretch: at scale 1 a crop whose drawn aspect does not fit keeps one whole side and spans 1/s of
    the other, s up to the factor (log-uniform aspect as before the fit fix); at 1 the whole image, unchanged."""
    for stretch, most in ((1.0, 0.0), (1.1, 0.1), (1.16, 2 / 3 ** 0.5 - 1)):
        crop = Augment(scale=(1.0, 1.0), stretch=stretch, hflip=0.0)
        w, h = crop_extents(crop, 400)
        factor = 1 / torch.minimum(w, h)  # the stretch of the narrowed axis
        assert float(torch.maximum(w, h).min()) > 0.99  # one side is whole
        assert float(factor.max()) <= 1 + most + 0.02 and float(factor.max()) >= 1 + 0.8 * most
        assert crop.flip_only == (stretch == 1.0)


@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_op_keeps_shape_dtype_and_range(policy, channels):
    x = images(len(OPS) * 2, channels)
    aug = Augment(policy=policy, erase=0.0)
    p = aug.draw(len(x), torch.Generator().manual_seed(1))
    p["op"] = torch.arange(len(OPS)).repeat(2).view(-1, 1).repeat(1, p["op"].shape[1])  # every op, twice
    out = aug.apply(x, p, IDENTITY)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 255
    changed = (out - aug.apply(x, {**p, "op": torch.zeros_like(p["op"])}, IDENTITY)).abs().amax(dim=(1, 2, 3))
    assert (changed[1:len(OPS)] > 0).sum() >= len(OPS) - 3  # nearly every op changes something


@pytest.mark.parametrize("name,pil", [
    ("equalize", ImageOps.equalize), ("autocontrast", ImageOps.autocontrast),
    ("posterize", lambda im: ImageOps.posterize(im, 5)), ("solarize", lambda im: ImageOps.solarize(im, 128))])
def test_colour_ops_match_pil(name, pil):
    x = images(4, 3, 20, seed=3)
    x[1] = x[1] // 3 + 60  # a narrow range, where autocontrast and equalize matter
    top = {**MAX_LEVEL["trivial"], "posterize": 6, "solarize": 256}
    level = {"posterize": torch.full((4,), 3 / 6), "solarize": torch.full((4,), 0.5)}.get(name, torch.zeros(4))
    ours = COLOUR_OPS[name](x.float(), level, top).round().clamp(0, 255).to(torch.uint8)
    for i in range(4):
        ref = np.asarray(pil(Image.fromarray(x[i].permute(1, 2, 0).numpy())))
        diff = np.abs(ours[i].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
        assert diff.max() <= 1, (name, i, diff.max())


def test_random_erasing_fills_one_noise_rectangle_reproducibly():
    x = torch.full((8, 1, 16, 16), 128, dtype=torch.uint8)
    aug = Augment(scale=(1.0, 1.0), hflip=0.0, erase=1.0)
    p = aug.draw(8, torch.Generator().manual_seed(0))
    a, b = aug.apply(x, p, IDENTITY), aug.apply(x, p, IDENTITY)
    assert torch.equal(a, b)
    erased = (a != 128).flatten(1).sum(1)
    assert (erased > 0).all() and (erased < 16 * 16 * 0.5).all()


def test_mix_targets_sum_to_one_and_follow_the_pixels():
    x, partner = torch.zeros(6, 1, 10, 10), torch.ones(6, 1, 10, 10)
    y, y_partner = torch.arange(6) % 3, (torch.arange(6) + 1) % 3
    g = torch.Generator().manual_seed(0)
    for mix in (Mix(mixup=0.8, smoothing=0.1), Mix(cutmix=1.0), Mix(mixup=0.8, cutmix=1.0, switch=0.5)):
        for _ in range(10):
            d = mix.draw(g)
            out, target = mix.apply(x, partner, y, y_partner, 3, d)
            assert out.shape == x.shape and target.shape == (6, 3)
            torch.testing.assert_close(target.sum(1), torch.ones(6))
            share = float(out[0].mean())  # the partner's share of the pixels
            expected = float(target[0, y_partner[0]]) - mix.smoothing / 3
            assert share == pytest.approx(expected / (1 - mix.smoothing) if mix.smoothing else expected, abs=1e-5)


def test_loader_is_seeded_and_covers_the_data():
    data = dataset()
    loader = BatchLoader(data, 16, (0.5,), (0.25,), torch.device("cpu"), shuffle=True,
                         augment=Augment(policy="trivial", erase=0.5))
    loader.set_epoch_seed(7)
    first = [(b.x.clone(), b.y.clone()) for b in loader]
    loader.set_epoch_seed(7)
    again = list(loader)
    assert len(first) == 4 and first[-1][0].shape == (2, 1, 8, 8)
    assert all(torch.equal(a[0], b.x) and torch.equal(a[1], b.y) for a, b in zip(first, again))
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(data.labels.tolist())


def test_process_shares_of_a_batch_equal_the_single_process_batch():
    """Images, augmentation and mixing partners depend on the position in the global batch only."""
    data = dataset(60)
    kwargs = dict(batch_size=20, mean=(0.5,), std=(0.25,), device=torch.device("cpu"), shuffle=True,
                  augment=Augment(policy="randaugment", erase=0.5, translate=0.1), mix=Mix(mixup=0.8, cutmix=1.0),
                  num_classes=5)
    whole = BatchLoader(data, **kwargs)
    parts = [BatchLoader(data, rank=r, world_size=3, **kwargs) for r in range(3)]
    for loader in [whole, *parts]:
        loader.set_epoch_seed(3)
    for full, *shares in zip(whole, *parts):
        torch.testing.assert_close(torch.cat([s.x for s in shares]), full.x)
        torch.testing.assert_close(torch.cat([s.target for s in shares]), full.target)
        assert all(s.size == full.size == 20 for s in shares)


def test_repeated_augmentation_and_balanced_sampler():
    data = dataset(48, classes=4)
    loader = BatchLoader(data, 12, (0.5,), (0.25,), torch.device("cpu"), shuffle=True, repeats=3)
    loader.set_epoch_seed(0)
    order = loader.order()
    assert len(order) == 48 and (order.view(-1, 3) == order.view(-1, 3)[:, :1]).all()
    labels = torch.tensor([0] * 90 + [1] * 10)
    skewed = ImageSet(torch.zeros(100, 1, 4, 4, dtype=torch.uint8), labels, [str(i) for i in range(100)])
    weights = torch.tensor([100 / (2 * 90), 100 / (2 * 10)])
    sampler = BatchLoader(skewed, 100, (0.5,), (0.25,), torch.device("cpu"), shuffle=True, class_weights=weights)
    sampler.set_epoch_seed(0)
    drawn = labels[torch.cat([sampler.order() for _ in range(20)])]
    assert abs(float((drawn == 1).float().mean()) - 0.5) < 0.05


def test_larger_images_come_out_at_the_augmentations_size():
    """`size`: training images decoded larger (`data.decode_scale`) are cropped and resampled to the model's input:
    the whole image, unflipped, is the antialiased resize; a crop spans the drawn share of the larger image."""
    x = images(20, c=3, size=24)
    g = torch.Generator().manual_seed(0)
    plain = Augment(scale=(1.0, 1.0), hflip=0.0, size=16)
    out = plain.apply(x, plain.draw(len(x), g), IDENTITY)
    want = torch.nn.functional.interpolate(x.float(), size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(out, want)
    for aug in (Augment(size=16, policy="trivial", erase=0.5), Augment(scale=(1.0, 1.0), hflip=1.0, size=16)):
        assert aug.apply(x, aug.draw(len(x), g), IDENTITY).shape == (20, 3, 16, 16)
    w, h = crop_extents(Augment(scale=(0.5, 0.5), hflip=0.0, size=32), 200)  # 64 px images to 32 px crops
    torch.testing.assert_close(w * h, torch.full_like(w, 0.5), atol=0.03, rtol=0)
