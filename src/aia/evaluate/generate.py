"""Text-to-image inference for the generation benchmarks (GenEval, DPG-Bench, WISE).

:func:`generate_images` reads a benchmark's prompt file, has the model's family adapter
generate the images (:meth:`~aia.adapters.base.AdapterBase.generate_images`, with the
family's defaults :attr:`~aia.adapters.base.AdapterBase.image_defaults`) and writes them
in the layout the benchmark's evaluation script reads (see "Output layouts" below). The
families:

* **Janus / Janus-Pro**: ``model.generate(..., generation_mode="image")``, the prompt in
  Janus' chat format followed by ``<begin_of_image>``, classifier-free guidance on the
  unconditional rows transformers builds (the prompt replaced by padding; scale 5 by
  default, as Janus' own ``generation_inference.py``), the codes decoded with
  ``model.decode_image_tokens``;
* **Emu3**: ``model.generate`` on Emu3's generation prompt (``Emu3Processor(...,
  return_for_image_generation=True)``: the prompt, then ``<|image start|>{h}*{w}<|image
  token|>``), constrained by ``prefix_allowed_tokens_fn`` to ``w`` image tokens and an
  end-of-line per row, then end-of-frame, end-of-image and end-of-sequence (as
  transformers' Emu3 documentation does), classifier-free guidance against a negative
  prompt (transformers' ``negative_prompt_ids``); defaults from the Emu3-Gen model card:
  guidance 3, top-k 2048, its positive suffix and negative prompt
  (:attr:`aia.adapters.Emu3Adapter.image_defaults`); the rows decoded with ``model.decode_image_tokens``;
* **the demo's VQ-LM** (:class:`aia.demo.VQLMAdapter`): codes sampled over the code tokens,
  no guidance by default, decoded by the processor's image tokenizer;
* **GLM-Image** (:class:`aia.adapters.GlmImageAdapter`): ``model.generate`` on
  ``GlmImageProcessor``'s prompt for the target size (``image_area`` pixels at ``ratio``, 1024x1024
  by default), restricted to the codes: a ~16x16 preview grid, then the full grid (``target / 32``),
  no guidance, sampled with the checkpoint's ``generation_config`` (temperature, top-p, top-k) unless
  given. Its pixel decoder (a diffusion transformer, diffusers' ``GlmImagePipeline``) is not part of the
  transformers class, so it writes the image *tokens* (:class:`~aia.adapters.base.ImageTokens`,
  :attr:`~aia.adapters.base.AdapterBase.image_output` ``"tokens"``), one ``.tokens.json`` per image,
  in the plain layout only (the others hold PNGs for their scorers: refused before the model loads);
* **Chameleon**: transformers ships no image decoder for Chameleon (its VQ-VAE has only the
  encoder), so it cannot generate images: :class:`~aia.errors.InputError`, before the model
  loads (as for every model class whose adapter generates no images).

Sampling (temperature, top-k, then top-p as transformers' nucleus rule; each the family's
default where not given) is done after transformers' guidance and constraint
(:func:`aia.adapters.imagegen.seeded_sampler`), one ``torch.Generator`` per image seeded
from ``(seed, prompt index, image index)``; the chosen token is handed back to
transformers' greedy step. So an image does not depend on the batch it was generated in
nor on what was generated before: batching and resuming give the same PNGs (token files).

Prompt files (read by :func:`read_prompts`, chosen by the file's extension):

=================  ===================================================================
``.jsonl``         GenEval's ``evaluation_metadata.jsonl``: one JSON object per line with
                   a ``"prompt"`` string (the line is kept verbatim for ``metadata.jsonl``)
``.json``          WISE: a JSON list of objects with ``"prompt_id"`` and ``"Prompt"``
``.txt``           one prompt per non-blank line
a folder           DPG-Bench's ``prompts/``: one ``.txt`` file per prompt, named by its stem
=================  ===================================================================

Output layouts (``fmt``):

=========  ============================================================================
geneval    ``DIR/{index:05d}/metadata.jsonl`` (the prompt file's line) and
           ``DIR/{index:05d}/samples/{k:05d}.png``, as GenEval's
           ``generation/diffusers_generate.py`` writes them; 4 images per prompt
dpg        ``DIR/{name}.png``: the prompt's images in one grid (2x2 for the default 4),
           ``name`` the prompt file's stem, as DPG-Bench's ``compute_dpg_bench.py`` reads
wise       ``DIR/{prompt_id}.png``, one image per prompt
plain      ``DIR/{index:05d}_{k}.png`` and ``DIR/index.jsonl`` (one line per prompt:
           ``{"index", "name", "prompt", "files"}``); a family that writes tokens
           (GLM-Image): ``DIR/{index:05d}_{k}.tokens.json`` instead of the PNG, one JSON
           object ``{"grids": [[rows, columns], ...], "tokens": [[code, ...], ...]}`` (each
           grid's codes row by row, the grids in the order the model wrote them)
=========  ============================================================================

A prompt whose files all exist is skipped; files are written through a temporary name, so
an interrupted run leaves no half-written PNG (or token file). A rerun continues a folder only
when it is made with what made it: the model (its fingerprint), the prompts and every setting that
changes an image, the family's defaults filled in, are recorded in ``<DIR>.manifest.json`` beside it
(:mod:`aia.evaluate.manifest`); another seed, prompt file, guidance, ... is refused naming the first
that differs, and ``overwrite`` starts the folder over (the layout's files are removed). One run
writes a folder at a time; a folder that is complete already loads no model, unless it was made with
a default that only the loaded model tells (GLM-Image's sampling settings come from its checkpoint:
the record's are checked against them).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aia.adapters.base import ImageTokens
from aia.adapters.imagegen import ImageOptions
from aia.errors import DataError, InputError
from aia.evaluate.manifest import (
    Interrupted,
    check_manifest,
    digest,
    manifest_path,
    model_fingerprint,
    output_lock,
    writable_output,
)
from aia.jsonl import read_jsonl

__all__ = [
    "FORMATS",
    "Prompt",
    "check_can_generate",
    "generate_images",
    "image_seed",
    "read_prompts",
    "resolve_model",
]

FORMATS = ("plain", "geneval", "dpg", "wise")
#: images per prompt when not given: GenEval's and DPG-Bench's 4, WISE's 1
IMAGES_PER_PROMPT = {"plain": 1, "geneval": 4, "dpg": 4, "wise": 1}
#: the longest file name most file systems take, in bytes (a WISE prompt_id names a file)
NAME_MAX = 255


# ----------------------------------------------------------------- models
def _dtype(dtype) -> torch.dtype | None:
    """``dtype`` (a name, an alias such as ``bf16``, ``"auto"``, None or a ``torch.dtype``) as a torch dtype."""
    from aia.options import torch_dtype

    try:
        return torch_dtype(dtype)
    except ValueError as err:
        raise InputError(str(err), field="dtype") from None


def _architecture(model_dir: Path) -> str | None:
    """The model class ``config.json`` names (None when it cannot tell; loading reports why)."""
    try:
        return (json.loads((model_dir / "config.json").read_text()).get("architectures") or [None])[0]
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def check_can_generate(model_dir: str | Path, fmt: str | None = None) -> None:
    """Refuse, from its ``config.json`` alone, a saved model whose family generates no images (Chameleon,
    understanding-only models), or, with ``fmt``, whose family writes image tokens (GLM-Image) where the
    layout needs PNGs (every layout but ``plain``); a config that cannot be read, or names a class
    without an adapter, is left to loading to report.

    Raises:
        InputError: naming the directory (or the ``fmt`` field) and why.
    """
    cls = _adapter_class(model_dir)
    if cls is not None:
        _check_family(cls, _architecture(Path(model_dir)) or cls.__name__, fmt, where=model_dir)


def _check_family(cls, model_class: str, fmt: str | None = None, where=None) -> None:
    """Refuse an adapter class that generates no images, or that writes tokens where ``fmt`` needs PNGs."""
    if cls.image_defaults is None:
        raise InputError(f"{model_class} {cls.no_images_reason}", path=where)
    if fmt is not None and fmt != "plain" and cls.image_output == "tokens":
        raise InputError(f"the {fmt} layout holds PNGs for its scorer, but {model_class} generates image tokens "
                         "(its pixel decoder is not part of the transformers class); use the plain layout, "
                         "which writes the tokens", field="fmt")


def _option_owners(option: str) -> list[str]:
    """The families whose adapters take ``option`` (an :class:`ImageDefaults` ``options`` name)."""
    from aia.adapters import ADAPTERS

    return sorted({cls.family for cls in ADAPTERS.values()
                   if cls.image_defaults is not None and option in cls.image_defaults.options})


def resolve_model(model, processor=None, *, device="cpu", dtype=None):
    """``(model, processor)`` from a model directory (loaded with :func:`aia.adapters.load_model`)
    or from a model already loaded (then ``processor`` is required and the model is used as it is).

    Raises:
        InputError: no processor with a loaded model, a bad ``dtype``, or what loading raises.
    """
    if isinstance(model, str | os.PathLike):
        from aia.adapters import load_model

        return load_model(model, dtype=_dtype(dtype), device=device)
    if processor is None:
        raise InputError("a loaded model needs its processor (processor=...)", field="processor")
    return model, processor


@contextlib.contextmanager
def quiet_transformers():
    """transformers' logging at error level for the duration (generate's notes on its own defaults)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


# ----------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Prompt:
    """One prompt of a prompt file.

    Attributes:
        index: its position among the file's prompts (0-based; the GenEval folder number).
        text: the prompt.
        name: the output name for the dpg / wise layouts (DPG file stem, WISE prompt_id,
            else ``{index:05d}``).
        line: GenEval's metadata line (the file's line verbatim for ``.jsonl``, else
            ``{"prompt": text}``).
    """

    index: int
    text: str
    name: str
    line: str


def _prompt_error(message: str, path: Path, record=None, field_name=None) -> DataError:
    return DataError(message, path=path, record=record, field=field_name)


def read_prompts(path: str | Path) -> list[Prompt]:
    """The prompts of a GenEval ``.jsonl``, a WISE ``.json``, a ``.txt`` or a DPG folder (module doc).

    Raises:
        DataError: the file is missing, of an unknown kind, not UTF-8, or a line/record is not
            what its format needs; the message names the file, the line or record and the field.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dpg_folder(path)
    if not path.is_file():
        raise DataError("no such prompts file or folder", path=path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".txt"):
        raise DataError(f"unknown prompts file type {path.suffix!r}; expected .jsonl (GenEval metadata), "
                        ".json (WISE), .txt (one prompt per line) or a folder of .txt files (DPG-Bench)", path=path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start})", path=path) from None
    if suffix == ".jsonl":
        prompts = _read_geneval(path)
    elif suffix == ".json":
        prompts = _read_wise(path, text)
    else:
        prompts = [Prompt(i, line.strip(), f"{i:05d}", json.dumps({"prompt": line.strip()}))
                   for i, line in enumerate(ln for ln in text.split("\n") if ln.strip())]
    if not prompts:
        raise DataError("no prompts", path=path)
    return prompts


def _read_geneval(path: Path) -> list[Prompt]:
    prompts = []
    for lineno, meta, line in read_jsonl(path):
        if not isinstance(meta, dict):
            raise _prompt_error(f"a GenEval metadata line is a JSON object, got {type(meta).__name__}", path,
                                f"line {lineno}")
        prompt = meta.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _prompt_error("needs a non-empty 'prompt' string", path, f"line {lineno}", "prompt")
        index = len(prompts)
        prompts.append(Prompt(index, prompt.strip(), f"{index:05d}", line))
    return prompts


def _read_wise(path: Path, text: str) -> list[Prompt]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise _prompt_error(f"invalid JSON: {e.msg} (column {e.colno})", path, f"line {e.lineno}") from None
    if not isinstance(items, list):
        raise _prompt_error(f"a WISE prompt file is a JSON list, got {type(items).__name__}", path)
    prompts, seen = [], {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _prompt_error(f"a WISE prompt is an object, got {type(item).__name__}", path, i)
        pid, prompt = item.get("prompt_id"), item.get("Prompt")
        if isinstance(pid, bool) or not isinstance(pid, int | str) or str(pid).strip() in ("", ".", ".."):
            raise _prompt_error("needs a 'prompt_id' (number or name)", path, i, "prompt_id")
        name = str(pid).strip()
        if "/" in name or "\\" in name or "\0" in name:
            raise _prompt_error(f"'prompt_id' {name!r} cannot name a file", path, i, "prompt_id")
        if len(f"{name}.png".encode()) > NAME_MAX:
            raise _prompt_error(f"{name[:20]!r}... is too long for a file name ({len(name.encode())} bytes; "
                                f"at most {NAME_MAX - 4})", path, i, "prompt_id")
        if name in seen:
            raise _prompt_error(f"duplicate prompt_id {name!r} (first at record {seen[name]})", path, i, "prompt_id")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _prompt_error("needs a non-empty 'Prompt' string", path, i, "Prompt")
        seen[name] = i
        prompts.append(Prompt(i, prompt.strip(), name, json.dumps({"prompt": prompt.strip()})))
    return prompts


def _read_dpg_folder(folder: Path) -> list[Prompt]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not files:
        raise DataError("no .txt prompt files in the folder (DPG-Bench: one .txt per prompt)", path=folder)
    prompts = []
    for i, file in enumerate(files):
        try:
            text = file.read_text(encoding="utf-8-sig").strip()
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text (byte {e.start})", path=file) from None
        if not text:
            raise DataError("empty prompt file", path=file)
        prompts.append(Prompt(i, text, file.stem, json.dumps({"prompt": text})))
    return prompts


# ----------------------------------------------------------------- output layouts
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_png(image: Image.Image, path: Path) -> None:
    _atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def grid(images: list[Image.Image]) -> Image.Image:
    """The images in a grid, row by row: ``ceil(sqrt(n))`` columns (2x2 for 4, DPG-Bench's layout)."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    out = Image.new("RGB", (cols * w, rows * h))
    for i, image in enumerate(images):
        out.paste(image, ((i % cols) * w, (i // cols) * h))
    return out


class _Writer:
    """Where a layout puts each prompt's ``n`` images, and how it writes them (the plain layout's)."""

    #: the names the layout writes at the top of its folder (what a start over removes)
    names = r"\d{5}_\d+\.png|index\.jsonl"

    def __init__(self, out_dir: Path, n: int):
        self.out_dir, self.n = out_dir, n

    def files(self, prompt: Prompt) -> list[Path]:
        """The files the prompt's images end up in."""
        return [self.out_dir / f"{prompt.index:05d}_{k}.png" for k in range(self.n)]

    def complete(self, prompt: Prompt) -> bool:
        """Whether the prompt was written by an earlier run."""
        return all(f.is_file() for f in self.files(prompt))

    def todo(self, prompt: Prompt) -> list[int]:
        """The images ``k`` of an incomplete prompt still to generate."""
        return [k for k, f in enumerate(self.files(prompt)) if not f.is_file()]

    def begin(self, prompts: list[Prompt]) -> None:
        """Before the first image (the folder exists)."""

    def write(self, prompt: Prompt, k: int, image: Image.Image) -> None:
        """Image ``k`` of ``prompt``, as soon as it is generated."""
        _save_png(image, self.files(prompt)[k])


class _PlainWriter(_Writer):
    """``DIR/{index:05d}_{k}.png`` and ``DIR/index.jsonl``, one line per prompt."""

    def _index(self, prompts: list[Prompt]) -> str:
        return "".join(json.dumps({"index": p.index, "name": p.name, "prompt": p.text,
                                   "files": [f.name for f in self.files(p)]}, ensure_ascii=False) + "\n"
                       for p in prompts)

    def begin(self, prompts: list[Prompt]) -> None:
        _write_text(self.out_dir / "index.jsonl", self._index(prompts))


class _PlainTokensWriter(_PlainWriter):
    """``DIR/{index:05d}_{k}.tokens.json`` (:meth:`ImageTokens.to_dict`) and ``DIR/index.jsonl``: the plain
    layout of a family whose images are tokens (:attr:`~aia.adapters.base.AdapterBase.image_output`)."""

    names = r"\d{5}_\d+\.tokens\.json|index\.jsonl"

    def files(self, prompt: Prompt) -> list[Path]:
        return [self.out_dir / f"{prompt.index:05d}_{k}.tokens.json" for k in range(self.n)]

    def write(self, prompt: Prompt, k: int, image) -> None:
        if not isinstance(image, ImageTokens):
            raise TypeError(f"a family whose image_output is 'tokens' returns ImageTokens, got {type(image).__name__}")
        _write_text(self.files(prompt)[k], json.dumps(image.to_dict()) + "\n")


class _GenEvalWriter(_Writer):
    """``DIR/{index:05d}/metadata.jsonl`` and ``DIR/{index:05d}/samples/{k:05d}.png``."""

    names = r"\d{5}"

    def files(self, prompt: Prompt) -> list[Path]:
        return [self.out_dir / f"{prompt.index:05d}" / "samples" / f"{k:05d}.png" for k in range(self.n)]

    def _metadata(self, prompt: Prompt) -> Path:
        return self.out_dir / f"{prompt.index:05d}" / "metadata.jsonl"

    def complete(self, prompt: Prompt) -> bool:
        return super().complete(prompt) and self._metadata(prompt).is_file()

    def write(self, prompt: Prompt, k: int, image: Image.Image) -> None:
        if not self._metadata(prompt).is_file():
            _write_text(self._metadata(prompt), prompt.line + "\n")
        super().write(prompt, k, image)


class _DpgWriter(_Writer):
    """``DIR/{name}.png``: the prompt's images in one grid, written when the last one is in."""

    names = r"[^.].*\.png"

    def __init__(self, out_dir: Path, n: int):
        super().__init__(out_dir, n)
        self._parts: dict[int, dict[int, Image.Image]] = {}  # prompt index -> its images so far

    def files(self, prompt: Prompt) -> list[Path]:
        return [self.out_dir / f"{prompt.name}.png"]

    def todo(self, prompt: Prompt) -> list[int]:
        return list(range(self.n))

    def write(self, prompt: Prompt, k: int, image: Image.Image) -> None:
        parts = self._parts.setdefault(prompt.index, {})
        parts[k] = image
        if len(parts) == self.n:
            del self._parts[prompt.index]
            _save_png(grid([parts[i] for i in range(self.n)]), self.files(prompt)[0])


class _WiseWriter(_Writer):
    """``DIR/{prompt_id}.png``, one image per prompt."""

    names = r"[^.].*\.png"

    def files(self, prompt: Prompt) -> list[Path]:
        return [self.out_dir / f"{prompt.name}.png"]


#: the writer of each output layout (``fmt``)
WRITERS: dict[str, type[_Writer]] = {"plain": _PlainWriter, "geneval": _GenEvalWriter, "dpg": _DpgWriter,
                                     "wise": _WiseWriter}
#: the writer of each layout for a family whose images are tokens (the others need PNGs)
TOKEN_WRITERS: dict[str, type[_Writer]] = {"plain": _PlainTokensWriter}


def _writer(fmt: str, family, out_dir: Path, n: int) -> _Writer:
    """The writer of layout ``fmt`` for the images of ``family`` (an adapter class; None: not known yet)."""
    tokens = family is not None and family.image_output == "tokens"
    return (TOKEN_WRITERS if tokens else WRITERS)[fmt](out_dir, n)  # fmt checked (_check_family)


def _written(out_dir: Path, *, temporary: bool = False) -> list[Path]:
    """The entries of ``out_dir`` that a layout writes (and its temporary files, with ``temporary``)."""
    if not out_dir.is_dir():
        return []
    return [entry for entry in out_dir.iterdir()
            if any(re.fullmatch(w.names, entry.name) for w in (*WRITERS.values(), *TOKEN_WRITERS.values()))
            or (temporary and re.fullmatch(r"\..+\.tmp", entry.name))]


def _clear(out_dir: Path) -> None:
    """Remove what any layout writes in ``out_dir`` (and temporary files): a start over, whatever the
    layout of the run that made it; other files stay."""
    for entry in _written(out_dir, temporary=True):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# ----------------------------------------------------------------- sampling
def image_seed(seed: int, index: int, k: int) -> int:
    """The seed of image ``k`` of prompt ``index`` (independent of batching and resuming)."""
    state = np.random.SeedSequence([seed, index, k]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


# ----------------------------------------------------------------- the entry point
def _check_options(fmt, images_per_prompt, batch_size, temperature, top_k, top_p, guidance, seed, ratio,
                   image_area) -> int:
    if fmt not in FORMATS:
        raise InputError(f"unknown output format {fmt!r}; known: {', '.join(FORMATS)}", field="fmt")
    n = IMAGES_PER_PROMPT[fmt] if images_per_prompt is None else images_per_prompt
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"must be a positive integer, got {images_per_prompt!r}", field="images_per_prompt")
    if fmt == "wise" and n != 1:
        raise InputError("the WISE layout holds one image per prompt ({prompt_id}.png)", field="images_per_prompt")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"must be a positive integer, got {batch_size!r}", field="batch_size")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, int | float)
                                    or not 0 <= temperature < math.inf):
        raise InputError(f"must be a finite number >= 0 (0: greedy), got {temperature!r}", field="temperature")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"must be a positive integer or None, got {top_k!r}", field="top_k")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1):
        raise InputError(f"must be a number in (0, 1] (1: no nucleus cut), got {top_p!r}", field="top_p")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, int | float)
                                 or not 1 <= guidance < math.inf):
        raise InputError(f"must be a finite number >= 1 (1: no guidance), got {guidance!r}", field="guidance")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"must be a non-negative integer, got {seed!r}", field="seed")
    if image_area is not None and (isinstance(image_area, bool) or not isinstance(image_area, int) or image_area < 1):
        raise InputError(f"must be a positive number of pixels, got {image_area!r}", field="image_area")
    if not isinstance(ratio, str) or not re.fullmatch(r"[1-9]\d*:[1-9]\d*", ratio):
        raise InputError(f"must be 'width:height' in whole numbers, got {ratio!r}", field="ratio")
    return n


def generate_images(
    model,
    prompts_path: str | Path,
    out_dir: str | Path,
    *,
    processor=None,
    fmt: str = "plain",
    images_per_prompt: int | None = None,
    guidance: float | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    positive_prompt: str | None = None,
    negative_prompt: str | None = None,
    image_area: int | None = None,
    ratio: str = "1:1",
    seed: int = 0,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    check_only: bool = False,
) -> dict:
    """Generate the images of a prompt file in a benchmark's layout (see the module doc).

    Args:
        model: a model directory (``save_pretrained`` output, loaded on ``device`` in ``dtype``)
            or a loaded model of a family that generates (Janus, Emu3, GLM-Image, the demo's VQ-LM;
            then give ``processor``; used as it is).
        prompts_path: GenEval ``.jsonl``, WISE ``.json``, ``.txt`` or a DPG-Bench folder.
        out_dir: where the images go (created). Its images are continued only when the model,
            the prompts and every setting that changes an image (all but ``batch_size`` and
            ``progress``) are those recorded in ``<out_dir>.manifest.json``.
        fmt: ``"plain"``, ``"geneval"``, ``"dpg"`` or ``"wise"`` (a family that writes image tokens,
            GLM-Image: ``"plain"`` only).
        images_per_prompt: default 4 for geneval and dpg, 1 for plain and wise (wise: only 1).
        guidance: classifier-free guidance scale (1: none); None: the family's (Janus 5, Emu3 3, VQ-LM and
            GLM-Image 1).
        temperature: sampling temperature (0: greedy); None: the family's (Janus, Emu3 and VQ-LM 1; GLM-Image
            its checkpoint's ``generation_config``).
        top_k: sample among the ``top_k`` most likely tokens; None: the family's (Janus and VQ-LM all, Emu3
            2048, GLM-Image its checkpoint's).
        top_p: then among the fewest most likely tokens whose probability reaches ``top_p`` (in (0, 1],
            transformers' nucleus rule); None: the family's (Janus, Emu3 and VQ-LM none, GLM-Image its
            checkpoint's).
        positive_prompt: Emu3 only: appended to every prompt (None: the family's default; "" for none).
        negative_prompt: Emu3 only: the guidance's negative prompt (None: the family's default).
        image_area: Emu3 and GLM-Image only: pixels of the generated image (None: Emu3 the processor's
            ``image_area`` capped at its image processor's ``max_pixels``, 720x720 for Emu3-Gen; GLM-Image
            1024x1024).
        ratio: Emu3 and GLM-Image only: the image's aspect ratio ``"w:h"``.
        seed: images are seeded from ``(seed, prompt index, image index)``.
        batch_size: images generated together (any prompts); does not change the images.
        device, dtype: where and in which dtype to load a model directory.
        progress: show a progress bar (images/s).
        overwrite: start the folder over (the layout's files are removed) whatever made it.
        check_only: only check that the folder may be continued with these settings (the record in its
            manifest, the family's defaults as its ``config.json`` tells them), loading and writing nothing;
            returns ``{"format", "out_dir", "prompts", "checked"}``.

    Returns:
        ``{"format", "out_dir", "family", "image_output", "prompts", "prompts_done_before",
        "images_generated", "images_per_prompt", "guidance", "temperature", "top_k", "top_p", "seed"}``;
        ``image_output`` is ``"pixels"`` (PNGs) or ``"tokens"`` (``.tokens.json`` files).

    Raises:
        InputError: a Chameleon model (no image decoder in transformers) or another model that
            generates no images, a tokens family (GLM-Image) in a layout other than plain, a bad option
            (the message names it), a bad prompt file (:class:`~aia.errors.DataError` naming the file and
            line), an output that cannot be written there, or one made with another model, prompts or
            setting (naming the first that differs) or being written by another run.
        Interrupted: Ctrl-C (the images written so far are kept; the same call resumes).
    """
    from aia.adapters import get_adapter, unwrap

    n = _check_options(fmt, images_per_prompt, batch_size, temperature, top_k, top_p, guidance, seed, ratio,
                       image_area)
    from_folder = isinstance(model, str | os.PathLike)
    if from_folder:
        check_can_generate(model, fmt)  # before loading
    else:
        _check_family(_adapter_class(model), type(unwrap(model)).__name__, fmt)
    out_dir = writable_output(Path(out_dir), folder=True)
    prompts = read_prompts(prompts_path)
    given = {"guidance": guidance, "temperature": temperature, "top_k": top_k, "top_p": top_p,
             "positive_prompt": positive_prompt, "negative_prompt": negative_prompt, "image_area": image_area,
             "ratio": ratio}
    family = _adapter_class(model)  # from config.json, before loading; None: loading says why
    opts = _image_options(family, **given) if family is not None else _as_given(**given)
    if check_only:  # the record of an existing folder against these settings; nothing loads or is written
        before, after = _manifest(model, prompts, fmt, n, device, dtype)
        settings = _settings(seed, opts)
        recorded = {} if overwrite else _recorded_defaults(out_dir, settings, given)
        check_manifest(out_dir, "images", {**before, **settings, **recorded, **after}, overwrite=overwrite,
                       has_output=bool(_written(out_dir)), record=False)
        return {"format": fmt, "out_dir": str(out_dir), "prompts": len(prompts), "checked": True}
    with output_lock(out_dir, "aia generate"):
        before, after = _manifest(model, prompts, fmt, n, device, dtype)
        settings = _settings(seed, opts)  # the family's defaults filled in: an explicit default is the same run
        recorded = {} if overwrite else _recorded_defaults(out_dir, settings, given)
        fields = {**before, **settings, **recorded, **after}
        if not check_manifest(out_dir, "images", fields, overwrite=overwrite, has_output=bool(_written(out_dir))):
            _clear(out_dir)
        writer = _writer(fmt, family, out_dir, n)
        jobs, done_before = _pending(writer, prompts)
        # a complete folder loads no model, unless a default it was made with is the checkpoint's to tell
        if jobs or recorded or family is None or not from_folder:
            model, processor = resolve_model(model, processor, device=device, dtype=dtype)
            adapter = get_adapter(model, processor)
            family = type(adapter)
            _check_family(family, type(unwrap(model)).__name__, fmt)
            opts = _image_options(adapter, **given)  # the instance's defaults: a checkpoint may set its own
            real = {**before, **_settings(seed, opts), **after}
            if real != fields:
                check_manifest(out_dir, "images", real, has_output=bool(_written(out_dir)))
            writer = _writer(fmt, family, out_dir, n)
            jobs, done_before = _pending(writer, prompts)
        out_dir.mkdir(parents=True, exist_ok=True)
        writer.begin(prompts)
        if jobs:
            _generate(model, adapter, opts, jobs, writer, seed=seed, batch_size=batch_size,
                      desc=f"generating ({fmt})", progress=progress)
    return {"format": fmt, "out_dir": str(out_dir), "family": family.family, "image_output": family.image_output,
            "prompts": len(prompts), "prompts_done_before": done_before, "images_generated": len(jobs),
            "images_per_prompt": n, "guidance": opts.guidance, "temperature": opts.temperature, "top_k": opts.top_k,
            "top_p": opts.top_p, "seed": seed}


def _manifest(model, prompts: list[Prompt], fmt: str, n: int, device, dtype) -> tuple[dict, dict]:
    """What the images depend on besides the settings (:mod:`aia.evaluate.manifest`), the fields before
    them and after them: the model, the prompts as read and the layout; the dtype and the device's type."""
    if isinstance(model, str | os.PathLike):
        dtype, device = _dtype(dtype), torch.device(device)
    else:  # used as it is
        dtype, device = model.dtype, next(model.parameters()).device
    before = {"model": model_fingerprint(model),
              "prompt_file": digest([[p.index, p.name, p.text, p.line] for p in prompts]),
              "format": fmt, "images_per_prompt": n}
    return before, {"dtype": None if dtype is None else str(dtype).removeprefix("torch."), "device": device.type}


def _settings(seed: int, opts: ImageOptions) -> dict:
    """The settings an image depends on, as the manifest records them; ``top_p`` only where one is used
    (a record without it, made before the option existed, is a run without it)."""
    settings = {"seed": seed, "guidance": opts.guidance, "temperature": opts.temperature, "top_k": opts.top_k,
                "positive_prompt": opts.positive, "negative_prompt": opts.negative, "image_area": opts.image_area,
                "ratio": opts.ratio}
    if opts.top_p is not None:
        settings["top_p"] = opts.top_p
    return settings


def _recorded_defaults(out_dir: Path, settings: dict, given: dict) -> dict:
    """The settings left to the family's default (``given`` None) that ``out_dir``'s record holds with
    another value than the family class's default in ``settings``: ``{name: recorded value}``.

    A family may take its defaults from the checkpoint (GLM-Image: its ``generation_config``), which the
    loaded adapter tells, not its class. Such a setting is compared with the record as recorded before
    loading, and again with the adapter's own default once the model is loaded (so a folder holding one
    loads the model even when it is complete); a family whose defaults are its class's finds them
    different there, as it would have before loading."""
    try:
        old = json.loads(manifest_path(out_dir).read_text(encoding="utf-8")).get("images")
    except (OSError, ValueError, AttributeError):
        return {}  # no record (check_manifest reports one that cannot be read)
    if not isinstance(old, dict):
        return {}
    return {name: old[name] for name, value in given.items()
            if value is None and name in old and old[name] != settings.get(name)}


def _adapter_class(model):
    """The adapter class serving ``model`` (loaded, or a directory by its ``config.json``); None when the
    config cannot tell (loading reports why)."""
    from aia.adapters import adapter_class_of
    from aia.adapters.loading import saved_adapter_class

    if not isinstance(model, str | os.PathLike):
        return adapter_class_of(model)
    try:
        return saved_adapter_class(model)
    except (OSError, ValueError, LookupError, TypeError, AttributeError):  # InputError is a ValueError
        return None


def _as_given(guidance, temperature, top_k, top_p, positive_prompt, negative_prompt, image_area,
              ratio) -> ImageOptions:
    """The options as given (the family not known before loading: loading fills in its defaults)."""
    return ImageOptions(guidance=guidance, temperature=temperature, top_k=top_k, positive=positive_prompt,
                        negative=negative_prompt, image_area=image_area, ratio=ratio, top_p=top_p)


def _image_options(adapter, guidance, temperature, top_k, top_p, positive_prompt, negative_prompt, image_area,
                   ratio) -> ImageOptions:
    """The sampling options, the family's defaults where not given; an option of another family refused.
    ``adapter`` is an adapter (its defaults, which a checkpoint may set) or its class (the family's)."""
    defaults = adapter.image_defaults
    given = {"positive_prompt": positive_prompt, "negative_prompt": negative_prompt, "image_area": image_area,
             "ratio": None if ratio == "1:1" else ratio}  # 1:1 is what the families without the option draw
    foreign = [name for name, value in given.items() if value is not None and name not in defaults.options]
    if foreign:
        owners = _option_owners(foreign[0])
        raise InputError(f"an option of the {' and '.join(owners)} famil{'ies' if len(owners) > 1 else 'y'} only, "
                         f"not of {adapter.family}", field=foreign[0])
    if not defaults.guided and guidance not in (None, 1):
        raise InputError(f"{adapter.family} takes no classifier-free guidance (1: none), got {guidance!r}",
                         field="guidance")
    return ImageOptions(
        guidance=float(defaults.guidance if guidance is None else guidance),
        temperature=float(defaults.temperature if temperature is None else temperature),
        top_k=defaults.top_k if top_k is None else top_k,
        positive=defaults.positive if positive_prompt is None else positive_prompt,
        negative=defaults.negative if negative_prompt is None else negative_prompt,
        image_area=image_area,
        ratio=ratio,
        top_p=defaults.top_p if top_p is None else None if top_p == 1 else float(top_p),  # 1: no cut
    )


def _pending(writer: _Writer, prompts: list[Prompt]) -> tuple[list[tuple[Prompt, int]], int]:
    """``(the images (prompt, k) still to generate, the number of prompts complete already)``."""
    jobs: list[tuple[Prompt, int]] = []
    done_before = 0
    for p in prompts:
        if writer.complete(p):
            done_before += 1
        else:
            jobs += [(p, k) for k in writer.todo(p)]
    return jobs, done_before


def _generate(model, adapter, opts: ImageOptions, jobs: list[tuple[Prompt, int]], writer: _Writer, *, seed: int,
              batch_size: int, desc: str, progress: bool) -> None:
    """Generate ``jobs`` in batches, each image seeded by :func:`image_seed`, handed to ``writer``.

    Raises:
        Interrupted: Ctrl-C, naming the image it stopped at (those written are kept).
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), unit="img", desc=desc, disable=not progress)
    model.eval()
    done = 0
    try:
        with torch.inference_mode(), quiet_transformers():
            for start in range(0, len(jobs), batch_size):
                batch = jobs[start:start + batch_size]
                seeds = [image_seed(seed, p.index, k) for p, k in batch]
                images = adapter.generate_images(model, [p.text for p, _ in batch], seeds, opts)
                for (p, k), image in zip(batch, images, strict=True):
                    writer.write(p, k, image)
                    done += 1
                bar.update(len(batch))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at image {done + 1} of the {len(jobs)} to generate; rerun the same "
                          "command to resume") from None
    finally:
        bar.close()
