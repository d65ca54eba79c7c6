"""Image transforms applied before a model's own image processor (pure PIL, RGB in, RGB out).

* :func:`center_crop` is the released AIA code's generation transform
  (``center_crop_arr``, ``dataset/t2i_dataset.py:15-29``, applied at ``:38``): halve the
  image with a box filter while its shorter side is at least twice the target, resize the
  shorter side to the target with bicubic resampling, then cut the central square.
* :func:`resize_to_area` is the Emu3 recipe's proportional resize
  (``smart_resize`` in Emu3's ``emu3/train/prepare_data.py``, ``--image-area 518400`` =
  720 x 720 in ``scripts/t2i_sft.sh``): scale both sides by ``sqrt(area / (w * h))`` and round.

The record encoder applies them where a record is encoded, for training and profiling alike
(``data.image_area`` first, then ``data.gen_image_transform`` for generation samples;
:func:`aia.data.encoder.image_transform`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["center_crop", "resize_to_area"]


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """A ``size`` x ``size`` centre crop of ``image`` after resizing its shorter side to ``size``.

    As the released ``center_crop_arr``: while the shorter side is ``>= 2 * size`` the image
    is halved (``Image.BOX``, integer division of each side), then resized by
    ``size / shorter side`` with ``Image.BICUBIC`` (each side rounded), then the central
    ``size`` x ``size`` pixels are kept (offsets ``(side - size) // 2``). Smaller images are
    scaled up.
    """
    if size < 1:
        raise ValueError(f"center_crop: size must be >= 1, got {size}")
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def resize_to_area(image: Image.Image, area: int) -> Image.Image:
    """``image`` resized, keeping its aspect ratio, to about ``area`` pixels.

    As Emu3's ``smart_resize``: ``r = (area / (w * h)) ** 0.5``, new size
    ``(round(w * r), round(h * r))``, bicubic (PIL's default for RGB). Sides are at least 1.
    An image already of that size is returned as it is.
    """
    if area < 1:
        raise ValueError(f"resize_to_area: area must be >= 1, got {area}")
    w, h = image.size
    ratio = (area / (w * h)) ** 0.5
    size = (max(1, int(round(w * ratio))), max(1, int(round(h * ratio))))
    if size == image.size:
        return image
    return image.resize(size, resample=Image.BICUBIC)
