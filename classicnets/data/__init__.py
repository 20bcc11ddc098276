"""Data: sources (class folders, list files, IDX, CIFAR, Keras .npz), robust decoding, transforms and loaders
(docs/data.md)."""

from classicnets.data.batch_transforms import IMAGENET_EIGVAL, IMAGENET_EIGVEC, PAPER_PCA_STD, BatchTransform, lighting
from classicnets.data.cache import CacheSpec, DecodeCache, data_root
from classicnets.data.cached_loader import CachedLoader
from classicnets.data.datasets import FileDataset, ImageDataset, InMemoryDataset, pil_to_tensor
from classicnets.data.decode import IMAGE_EXTENSIONS, REASONS, BadImageError, decode_image, is_image_file
from classicnets.data.folders import find_split_dirs, list_class_folders, stratified_split
from classicnets.data.idx import FASHION_MNIST_CLASSES, open_idx, read_idx
from classicnets.data.loaders import Loader, make_loader
from classicnets.data.pca import pca_from_dataset
from classicnets.data.sources import open_dataset, open_splits, source_splits
from classicnets.data.transforms import ImageTransform

__all__ = [
    "IMAGENET_EIGVAL", "IMAGENET_EIGVEC", "PAPER_PCA_STD", "BatchTransform", "lighting",
    "FileDataset", "ImageDataset", "InMemoryDataset", "pil_to_tensor",
    "IMAGE_EXTENSIONS", "REASONS", "BadImageError", "decode_image", "is_image_file",
    "find_split_dirs", "list_class_folders", "open_dataset", "open_splits", "source_splits", "stratified_split",
    "CacheSpec", "DecodeCache", "data_root", "CachedLoader",
    "FASHION_MNIST_CLASSES", "open_idx", "read_idx", "Loader", "make_loader", "pca_from_dataset", "ImageTransform",
]  # fmt: skip
