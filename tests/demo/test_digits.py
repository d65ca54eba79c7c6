"""The digits world of the demo (:mod:`aia.demo.digits`): the VQ, PNGs, the processor, the data files."""

from __future__ import annotations

import numpy as np
import pytest

from aia.adapters import get_adapter, load_model
from aia.data.records import infer_task, load_image, read_records
from aia.demo.digits import VQ_FILE, DigitsProcessor, DigitsVQ, from_image, to_image, write_digits_data
from tests.demo.helpers import CODEBOOK, CODES, GEN, UND

# -- the VQ -----------------------------------------------------------------------------------


def test_vq_round_trip_error_is_small_and_the_fit_deterministic(split):
    vq = DigitsVQ.fit(split.train_images, num_codes=32, seed=0)
    again = DigitsVQ.fit(split.train_images, num_codes=32, seed=0)
    np.testing.assert_array_equal(vq.codebook, again.codebook)
    codes = vq.encode(split.test_images)
    assert codes.shape == (len(split.test_images), 16) and codes.dtype == np.int64
    np.testing.assert_array_equal(codes, again.encode(split.test_images))
    recon = vq.decode(codes)
    rmse = float(np.sqrt(((recon - split.test_images) ** 2).mean()))
    spread = float(split.test_images.std())
    assert rmse < 0.4 * spread, (rmse, spread)  # far better than predicting the mean pixel
    # single images take the same path as batches
    np.testing.assert_array_equal(vq.encode(split.test_images[0]), codes[0])
    np.testing.assert_allclose(vq.decode(codes[0]), recon[0])


def test_vq_encodes_images_made_of_codes_back_to_those_codes():
    vq = DigitsVQ(CODEBOOK)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(20, 16))
    np.testing.assert_array_equal(vq.encode(vq.decode(codes)), codes)
    # the reading order is row-major over the 4x4 grid: code 1 is the top row's second 2x2 patch
    pixels = vq.decode(CODES)
    np.testing.assert_array_equal(pixels[0:2, 2:4], CODEBOOK[CODES[1]].reshape(2, 2))
    np.testing.assert_array_equal(pixels[2:4, 0:2], CODEBOOK[CODES[4]].reshape(2, 2))
    with pytest.raises(ValueError, match="codes must be"):
        vq.decode(np.array([0, 4] * 8))


def test_png_round_trip_keeps_the_pixel_values(split):
    pixels = split.train_images[0]
    back = from_image(to_image(pixels))
    assert np.abs(back - pixels).max() < 1 / 30  # 0..16 values stored on 0..255
    assert from_image(to_image(pixels).convert("RGB").resize((16, 16))).shape == (8, 8)


# -- the processor and the data files ----------------------------------------------------------


def test_processor_saves_and_loads_with_the_model(hand_made, tmp_path):
    processor, model, adapter, image = hand_made
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / VQ_FILE).is_file()
    loaded = DigitsProcessor.from_pretrained(tmp_path / "m")
    np.testing.assert_array_equal(loaded.image_tokenizer.codebook, CODEBOOK)
    assert loaded.image_code_token_ids == processor.image_code_token_ids
    assert len(loaded.tokenizer) == len(processor.tokenizer)
    # aia profile / aia train load it through load_model
    model2, proc2 = load_model(tmp_path / "m")
    assert isinstance(proc2, DigitsProcessor) and type(model2).__name__ == "LlamaForCausalLM"
    for record, task in ((UND, "und"), (GEN, "gen")):
        a = adapter.encode(record, task, None, image=image)
        b = get_adapter(model2, proc2).encode(record, task, None, image=image)
        assert a.input_ids.tolist() == b.input_ids.tolist() and a.roles.tolist() == b.roles.tolist()
    with pytest.raises(FileNotFoundError, match=VQ_FILE):
        DigitsProcessor.from_pretrained(tmp_path)


def test_written_data_reads_back_as_records_of_the_data_format(split, tmp_path):
    small = type(split)(split.train_images[:5], split.train_labels[:5], split.test_images[:3], split.test_labels[:3])
    paths = write_digits_data(tmp_path, small)
    assert sorted(paths) == ["gen_test", "gen_train", "und_test", "und_train"]
    for key, path in paths.items():
        records = read_records(path)
        assert len(records) == (5 if key.endswith("train") else 3)
        assert all(infer_task(r) == key[:3] for r in records)
    und = read_records(paths["und_train"])
    for record, pixels, label in zip(und, small.train_images, small.train_labels, strict=True):
        assert record["conversations"][1]["value"] == str(label)
        assert np.abs(from_image(load_image(tmp_path / record["image"])) - pixels).max() < 1 / 30
    gen = read_records(paths["gen_test"])
    assert gen[0]["conversations"][0]["value"] == f"draw digit {small.test_labels[0]}"
