"""Image datasets: built-ins generated locally, readers for uploads and server folders, device transforms."""

from .builtin import BUILTIN, ImageDataset, dataset_sha256, digits, load_builtin, shapes
from .readers import DatasetError, read_dataset_file, read_image_folder, read_image_zip, read_npz

__all__ = [
    "BUILTIN", "DatasetError", "ImageDataset", "dataset_sha256", "digits", "load_builtin", "read_dataset_file",
    "read_image_folder", "read_image_zip", "read_npz", "shapes",
]  # fmt: skip
