"""Dataset layer: configs (``DATASET_SCHEMAS``), ``build_dataset``, ``make_loader`` and the
label decoders of the published benchmarks. Sources and folder trees: datasets/README.md."""
from .build import DATASETS, build_dataset, dataset_config
from .config import DATASET_SCHEMAS, ON_ERROR_CHOICES, PREPROCESS_PRESETS, DatasetConfig
from .dataset import FileDataset, SegmentationDataset, SkippedSample, collate_as_list, make_loader, select_ids
from .decode import DECODERS, IGNORE_INDEX, LabelDecoder, decoder_for, indices_decoder, label_to_train_ids
from .errors import DatasetFileError, DatasetNotFoundError, InvalidLabelError, MissingFileError
from .official import DATA_ROOT_ENV, OFFICIAL, resolve_root
from .preprocess import Preprocess

__all__ = [
    "DATASETS", "DATASET_SCHEMAS", "DATA_ROOT_ENV", "DECODERS", "DatasetConfig", "DatasetFileError",
    "DatasetNotFoundError", "FileDataset", "IGNORE_INDEX", "InvalidLabelError", "LabelDecoder", "MissingFileError",
    "OFFICIAL", "ON_ERROR_CHOICES", "PREPROCESS_PRESETS", "Preprocess", "SegmentationDataset", "SkippedSample",
    "build_dataset", "collate_as_list", "dataset_config", "decoder_for", "indices_decoder", "label_to_train_ids",
    "make_loader", "resolve_root", "select_ids",
]
