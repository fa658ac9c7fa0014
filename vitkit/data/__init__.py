"""Data: named datasets and image folders, decoded once into memory, split with a manifest, batched."""
from ..compat import require_torch

require_torch()

from .dataset import MANIFEST, DataBundle, ImageSet, is_named, load_data, read_manifest, write_manifest  # noqa: E402
from .images import BadImage, load_image  # noqa: E402
from .augment import Augment, Mix  # noqa: E402
from .loader import Batch, BatchLoader, Normalize  # noqa: E402
from .named import DATASETS  # noqa: E402

__all__ = ["DATASETS", "MANIFEST", "Augment", "BadImage", "Batch", "BatchLoader", "Mix", "DataBundle", "ImageSet", "Normalize",
           "is_named", "load_data", "load_image", "read_manifest", "write_manifest"]
