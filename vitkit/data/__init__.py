"""Data: named datasets and image folders, decoded once into memory, split with a manifest, batched."""
from ..compat import require_torch

require_torch()

from .augment import Augment, Mix  # noqa: E402
from .dataset import DataBundle, is_named, load_data  # noqa: E402
from .images import BadImage, load_image  # noqa: E402
from .loader import Batch, BatchLoader, Normalize  # noqa: E402
from .named import DATASETS  # noqa: E402
from .splits import MANIFEST, ImageSet, Split, read_manifest, write_manifest  # noqa: E402

__all__ = ["DATASETS", "MANIFEST", "Augment", "BadImage", "Batch", "BatchLoader", "DataBundle", "ImageSet", "Mix",
           "Normalize", "Split", "is_named", "load_data", "load_image", "read_manifest", "write_manifest"]
