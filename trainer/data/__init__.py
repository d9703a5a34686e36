"""Training data: the built-in shapes set, CSV files, WebDataset tar shards, and the loader."""

from trainer.data.build import build_loader, build_source
from trainer.data.csv_files import CsvDataset
from trainer.data.loader import Loader
from trainer.data.shapes import ShapesDataset
from trainer.data.stream import CorruptSample, CorruptSampleWarning
from trainer.data.tar_shards import WebDatasetShards
from trainer.data.transforms import CLIP_MEAN, CLIP_STD, ImageTransform

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CorruptSample",
    "CorruptSampleWarning",
    "CsvDataset",
    "ImageTransform",
    "Loader",
    "ShapesDataset",
    "WebDatasetShards",
    "build_loader",
    "build_source",
]
