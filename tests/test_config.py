"""Configuration layering and validation."""
from pathlib import Path

import pytest

from vitkit.config import build_config, describe_keys, save_config
from vitkit.errors import UserError


def test_layers_defaults_file_options_and_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.01\n  epochs: 3\nmodel:\n  name: vit_mini_patch4_28\n")
    cfg = build_config(f, {"train.epochs": 7}, ["lr=3e-4", "data.crop_scale=[0.5, 1]"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.name, cfg.data.crop_scale) == (3e-4, 7, "vit_mini_patch4_28",
                                                                                    [0.5, 1.0])
    again = tmp_path / "saved.yaml"
    again.write_text(save_config(cfg))
    assert build_config(again) == cfg


@pytest.mark.parametrize("text,message", [
    ("trian:\n  lr: 1\n", "unknown section 'trian' in .* \\(did you mean 'train'\\?\\)"),
    ("train:\n  lr: [\n", "not valid YAML at line"),
    ("train:\n  epochs: 0\n", "train.epochs must be greater than 0"),
    ("train:\n  epochs: 2.5\n", "train.epochs must be an integer"),
    ("data:\n  val_fraction: 1.5\n", "data.val_fraction must be in"),
    ("model:\n  global_pool: max\n", "model.global_pool must be one of null, token, avg"),
    ("data:\n  crop_scale: [0.9, 0.1]\n", "data.crop_scale must be"),
])
def test_bad_files_get_messages_that_name_the_key(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=message):
        build_config(f)


def test_every_key_is_documented():
    text = describe_keys()
    for line in text.splitlines():
        if line.startswith("  "):
            assert "# " in line and line.split("# ", 1)[1].strip(), line


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid_and_build_their_models(path):
    from vitkit.models import create_model

    cfg = build_config(path)
    m = cfg.model
    overrides = dict(patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
                     mlp_ratio=m.mlp_ratio, global_pool=m.global_pool, stem=m.stem, img_size=m.img_size)
    assert create_model(m.name, **overrides).patch_embed.num_patches > 0
