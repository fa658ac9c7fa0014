"""Data: named datasets and image folders, decoded once into memory, split with a manifest, batched."""
from .dataset import MANIFEST, DataBundle, ImageSet, is_named, load_data, read_manifest, write_manifest
from .images import BadImage, load_image
from .augment import Augment, Mix
from .loader import Batch, BatchLoader, Normalize
from .named import DATASETS

__all__ = ["DATASETS", "MANIFEST", "Augment", "BadImage", "Batch", "BatchLoader", "Mix", "DataBundle", "ImageSet", "Normalize",
           "is_named", "load_data", "load_image", "read_manifest", "write_manifest"]
