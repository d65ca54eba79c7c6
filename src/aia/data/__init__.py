"""The data format: reading record files (JSON, JSON Lines, parquet) and parsing records
(their task, conversation and image). Turning a record into tokens is the adapters' job."""

from aia.data.records import (
    IMAGE_PLACEHOLDER,
    dialogue,
    generation_prompt,
    image_path,
    infer_task,
    load_image,
    read_records,
    split_at_image,
    task_records,
)
from aia.errors import DataError, ImageError

__all__ = [
    "IMAGE_PLACEHOLDER",
    "DataError",
    "ImageError",
    "dialogue",
    "generation_prompt",
    "image_path",
    "infer_task",
    "load_image",
    "read_records",
    "split_at_image",
    "task_records",
]
