"""FFCV writers and loaders for deps (installed as ``deps_loaders``): files in, ``(images, labels)`` batches out.

- :func:`write_beton` writes an ImageFolder tree, a torchvision dataset or arrays to a .beton (ffcv-imagenet layout).
- :func:`train_loader` / :func:`val_loader` are ffcv-imagenet's pipelines with seeded crops and flips, on-device
  normalization and augmentation, elastic or progressive resolution and explicit distributed sharding;
  :func:`torchvision_train_loader` / :func:`torchvision_val_loader` do the same over an ImageFolder without FFCV.
- :func:`synthetic_beton` builds (once, cached) the bundled synthetic dataset.

FFCV is imported on first use only; this package imports nothing from ``deps_core``.
"""

from deps_loaders._ffcv import FFCVUnavailableError
from deps_loaders.augment import IMAGENET_MEAN, IMAGENET_STD, Augment, BatchTransform, ColorDistortion
from deps_loaders.base import EpochIterator, ImageLoader, LoaderOptions
from deps_loaders.beton import BetonError, BetonInfo, inspect_beton
from deps_loaders.fallback import TorchvisionImageLoader, torchvision_train_loader, torchvision_val_loader
from deps_loaders.ffcv_loaders import FFCVImageLoader, train_loader, val_loader
from deps_loaders.orders import HoldOut
from deps_loaders.resolution import ElasticResolution, FixedResolution, ProgressiveResolution, Resolution
from deps_loaders.synthetic import (
    SyntheticSpec,
    default_cache_dir,
    render_images,
    synthetic_arrays,
    synthetic_beton,
    synthetic_image_folder,
)
from deps_loaders.writer import BetonSummary, WriteOptions, write_beton

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augment",
    "BatchTransform",
    "BetonError",
    "BetonInfo",
    "BetonSummary",
    "ColorDistortion",
    "ElasticResolution",
    "EpochIterator",
    "FFCVImageLoader",
    "FFCVUnavailableError",
    "FixedResolution",
    "HoldOut",
    "ImageLoader",
    "LoaderOptions",
    "ProgressiveResolution",
    "Resolution",
    "SyntheticSpec",
    "TorchvisionImageLoader",
    "WriteOptions",
    "default_cache_dir",
    "inspect_beton",
    "render_images",
    "synthetic_arrays",
    "synthetic_beton",
    "synthetic_image_folder",
    "torchvision_train_loader",
    "torchvision_val_loader",
    "train_loader",
    "val_loader",
    "write_beton",
]
