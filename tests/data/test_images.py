"""Image transforms before the processor: the released Janus centre crop, Emu3's area resize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aia.data import center_crop, resize_to_area


def emu3_smart_resize(image, image_area):
    """Emu3's ``smart_resize`` (``emu3/train/prepare_data.py``), as written."""
    w, h = image.size
    target_ratio = (image_area / (h * w)) ** 0.5
    return image.resize((int(round(w * target_ratio)), int(round(h * target_ratio))))


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_center_crop_follows_the_released_steps_worked_by_hand():
    """dataset/t2i_dataset.py:15-29: halve (BOX) while the short side is >= 2x the size, bicubic-scale the
    short side to the size, keep the middle square. The expected images are built step by step here."""
    image = noise(100, 60)  # short side 60 < 96: no halving; scale 48/60 -> 80 x 48; middle from x = 16
    want = image.resize((80, 48), resample=Image.BICUBIC).crop((16, 0, 64, 48))
    assert np.array_equal(np.asarray(center_crop(image, 48)), np.asarray(want))
    image = noise(1000, 700)  # halved 3 times: 500x350, 250x175, 125x87; scale 48/87 -> 69 x 48; x from 10
    halved = image.resize((500, 350), Image.BOX).resize((250, 175), Image.BOX).resize((125, 87), Image.BOX)
    want = halved.resize((69, 48), resample=Image.BICUBIC).crop((10, 0, 58, 48))
    assert np.array_equal(np.asarray(center_crop(image, 48)), np.asarray(want))
    out = center_crop(noise(20, 13), 48)  # a small image is scaled up
    assert out.size == (48, 48) and out.mode == "RGB"


def test_center_crop_keeps_the_middle_and_drops_the_sides():
    # a wide image: red left third, green middle, blue right third -> the square crop is the green middle
    arr = np.zeros((64, 192, 3), dtype=np.uint8)
    arr[:, :64, 0] = 255
    arr[:, 64:128, 1] = 255
    arr[:, 128:, 2] = 255
    out = np.asarray(center_crop(Image.fromarray(arr), 32)).astype(int)
    inner = out[:, 2:-2]  # away from the bicubic edges
    assert (inner[..., 1] > 200).all() and (inner[..., 0] < 50).all() and (inner[..., 2] < 50).all()


def test_center_crop_of_the_right_size_is_the_image():
    image = noise(32, 32)
    assert np.array_equal(np.asarray(center_crop(image, 32)), np.asarray(image))
    with pytest.raises(ValueError):
        center_crop(image, 0)


@pytest.mark.parametrize("size", [(1024, 768), (300, 200), (720, 720), (17, 900)])
def test_resize_to_area_is_emu3s_smart_resize(size):
    image = noise(*size)
    area = 96 * 96
    out = resize_to_area(image, area)
    ref = emu3_smart_resize(image, area)
    assert out.size == ref.size
    assert np.array_equal(np.asarray(out), np.asarray(ref))
    w, h = out.size
    assert abs(w * h - area) <= w + h  # about `area` pixels (rounding each side by at most 1/2)
    assert abs(w / h - size[0] / size[1]) < 0.1 * size[0] / size[1] + 1 / h  # aspect ratio kept


def test_resize_to_area_keeps_an_image_of_that_area():
    image = noise(40, 10)
    assert resize_to_area(image, 400) is image
    assert resize_to_area(noise(1, 1000), 4).size == (1, 63)  # a side that rounds to 0 stays 1
    with pytest.raises(ValueError):
        resize_to_area(image, 0)
