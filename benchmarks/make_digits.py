"""A small digit-recognition task made here: 28x28 gray digits rendered from fonts, as an image folder.

    python benchmarks/make_digits.py OUT --train-per-class 100 --test-per-class 200

writes OUT/train/0 ... OUT/train/9 and OUT/test/0 ... OUT/test/9 (PNG, white digit on black as in MNIST). Each
image uses one of the fonts matplotlib ships (DejaVu, STIX, Computer Modern; regular, bold, italic) with a random
rotation, scale, shift, stroke width, blur and noise, all seeded. It stands in for MNIST where MNIST cannot be
downloaded, as a task other than Fashion-MNIST's for the transfer benchmark in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf",
         "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
         "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf",
         "cmb10.ttf"]


def render(digit: int, rng: np.random.Generator, fonts: list[Path]) -> Image.Image:
    font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), size=int(rng.integers(40, 60)))
    canvas = Image.new("L", (84, 84))
    draw = ImageDraw.Draw(canvas)
    draw.text((42, 42), str(digit), fill=255, font=font, anchor="mm", stroke_width=int(rng.integers(0, 3)),
              stroke_fill=255)
    canvas = canvas.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BICUBIC)
    box = canvas.getbbox() or (0, 0, 84, 84)
    digit_img = canvas.crop(box)
    scale = float(rng.uniform(14, 22)) / max(digit_img.size)  # MNIST-like: the digit fits a 20x20 box
    digit_img = digit_img.resize((max(1, round(digit_img.width * scale)), max(1, round(digit_img.height * scale))),
                                 Image.Resampling.LANCZOS)
    out = Image.new("L", (28, 28))
    x = (28 - digit_img.width) // 2 + int(rng.integers(-3, 4))
    y = (28 - digit_img.height) // 2 + int(rng.integers(-3, 4))
    out.paste(digit_img, (x, y))
    out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))
    noisy = np.asarray(out, np.float32) + rng.normal(0, float(rng.uniform(0, 25)), (28, 28))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = [font_dir / f for f in FONTS if (font_dir / f).is_file()]
    rng = np.random.default_rng(args.seed)
    for split, n in (("train", args.train_per_class), ("test", args.test_per_class)):
        for digit in range(10):
            folder = args.out / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                render(digit, rng, fonts).save(folder / f"{i:04d}.png")
    print(f"{args.out}: {10 * args.train_per_class} training and {10 * args.test_per_class} test images, "
          f"{len(fonts)} fonts")


if __name__ == "__main__":
    main()
