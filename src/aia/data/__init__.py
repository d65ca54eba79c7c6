"""The data format: reading record files (JSON, JSON Lines, parquet) and parsing records
(their task, conversation and image), and the image transforms applied before a model's
processor (:mod:`aia.data.images`). Turning a record into tokens is the adapters' job."""

from typing import TYPE_CHECKING

from aia._lazy import lazy_names
from aia.errors import DataError, ImageError

if TYPE_CHECKING:
    from aia.data.images import center_crop, resize_to_area
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

__all__ = [
    "IMAGE_PLACEHOLDER",
    "DataError",
    "ImageError",
    "center_crop",
    "dialogue",
    "generation_prompt",
    "image_path",
    "infer_task",
    "load_image",
    "read_records",
    "resize_to_area",
    "split_at_image",
    "task_records",
]

# imported at first use: importing one module of ``aia.data`` does not import the others
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "aia.data.images": ("center_crop", "resize_to_area"),
        "aia.data.records": (
            "IMAGE_PLACEHOLDER",
            "dialogue",
            "generation_prompt",
            "image_path",
            "infer_task",
            "load_image",
            "read_records",
            "split_at_image",
            "task_records",
        ),
    },
)
