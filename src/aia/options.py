"""The options of ``aia profile``, ``aia generate``, ``aia answer`` and ``aia score``, typed.

Each command's options are one dataclass; each field is documented once, where it is
defined, and :func:`aia.fields.add_flags` makes the command's flags from it (name, type,
default, help), so the same knob has the same name in every command: ``--guidance`` for
classifier-free guidance, ``--out`` for what a command writes, ``--dtype`` read by
:func:`torch_dtype`. The eval file of ``aia eval`` is :class:`aia.evaluate.suite.EvalConfig`
and the run config of ``aia train`` :class:`aia.training.config.RunConfig`, read from YAML
with the same machinery.

The library functions the commands call (:func:`aia.measure.teacher.profile_model`,
:func:`aia.evaluate.generate_images`, :func:`aia.evaluate.answer`, ...) take the same
values as keyword arguments; ``tests/cli/test_options.py`` keeps their defaults equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aia.adapters.prompts import IMAGE_PLACEMENTS, TURN_SEPARATORS, PromptConfig
from aia.core.spans import SPAN_CHOICES, TASKS, SpanConfig

__all__ = [
    "DTYPES",
    "AnswerOptions",
    "GenerateOptions",
    "ProfileOptions",
    "Runtime",
    "ScoreOptions",
    "dtype_name",
    "torch_dtype",
]

DTYPES = ("float32", "bfloat16", "float16")
"""The weights dtypes a model is loaded or trained in."""
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}

# the library's choices, spelled here so that building the parser imports no torch (a test keeps them equal)
FORMATS = ("plain", "geneval", "dpg", "wise")
BENCHES = ("pope", "mme", "mmmu", "mmvp", "custom")


def dtype_name(value) -> str | None:
    """The dtype's name in :data:`DTYPES` (aliases ``bf16``, ``fp16``, ``half``, ``fp32``, ``float``
    and ``torch.bfloat16`` & co. accepted); ``None`` for ``None`` or ``"auto"`` (as saved).

    Raises:
        ValueError: any other value.
    """
    if value is None:
        return None
    name = str(value).lower().removeprefix("torch.")
    if name == "auto":
        return None
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}; use {', '.join(DTYPES)} or auto")
    return name


def torch_dtype(value):
    """The ``torch.dtype`` of ``value`` (see :func:`dtype_name`; a ``torch.dtype`` passes), or None."""
    import torch

    if value is None or isinstance(value, torch.dtype):
        return value
    name = dtype_name(value)
    return None if name is None else getattr(torch, name)


@dataclass(kw_only=True)
class Runtime:
    """Where a command runs a saved model."""

    device: str = "cpu"
    """Where the model runs: cpu, cuda, cuda:1, mps, ..."""
    dtype: str = "auto"
    """Weights dtype: float32, bfloat16 or float16 (bf16, fp16, fp32 too); auto: as saved."""
    quiet: bool = False
    """No progress bar."""


_POSITIONAL = {"positional": True}
_MODEL_DIR_DOC = "directory of a saved model (e.g. aia train's final/)"


@dataclass(kw_only=True)
class ProfileOptions:
    """``aia profile``: measure per-layer interaction intensity (teacher forcing or decoding)."""

    model_dir: str | None = field(default=None, metadata=_POSITIONAL)
    """Directory of a model saved with save_pretrained, with its processor. Required without --config; with it,
    default: the run's model.path (give the run's final/ to profile the trained model)."""
    config: str | None = None
    """An aia train run config (YAML): profile what the run trains on, its model, data, prompts, spans, image
    preprocessing and length policy (aia.measure.run). Default: none, the flags say it."""
    data: str | None = None
    """JSON, JSONL or parquet data file (image paths relative to it). Required without --config; with it,
    default: the run's file of the task (another file is preprocessed as the run does)."""
    task: str | None = field(default=None, metadata={"choices": TASKS})
    """und: image -> text records; gen: text -> image records. Required without --config; with it, default:
    the run's only task with data."""
    samples: int = 100
    """Usable samples to measure (default 100, as the paper)."""
    out: str
    """Output JSON."""
    mode: str = field(default="teacher", metadata={"choices": ("teacher", "decode")})
    """teacher: one forward over the data's own tokens; decode: while the model generates (KV cache), by default
    as the released plot scripts do (gen: CFG 5, sampling at temperature 1; und: greedy, 512 tokens; GLM-Image: its
    checkpoint's generation config, no CFG) (default: teacher)."""
    max_new_tokens: int | None = None
    """decode: und answer length cap (default 512); gen: decode only this many image tokens (default all)."""
    guidance: float | None = None
    """decode, gen: classifier-free guidance weight (default: 5; GLM-Image 1; 1 = no guidance)."""
    temperature: float | None = None
    """decode, gen: sampling temperature (default: 1; GLM-Image its generation config's; 0 = greedy)."""
    top_k: int | None = None
    """decode, gen: sample among the k most likely codes (default: all; GLM-Image its generation config's)."""
    top_p: float | None = None
    """decode, gen: sample in the nucleus of this probability (default: all; GLM-Image its generation config's)."""
    seed: int | None = None
    """decode, gen: sampling seed (default 0)."""
    batch_size: int = 1
    """Samples per forward pass (decode: samples decoded together, both CFG branches included)."""
    max_length: int | None = None
    """Longest sample in tokens; longer ones are skipped and counted (default: the model's positions)."""
    method: str = field(default="auto", metadata={"choices": ("auto", "sdpa", "flex")})
    """Intensity route: sdpa (indicator column, CPU+GPU), flex (CUDA) or auto."""
    spans: SpanConfig = field(
        default_factory=SpanConfig,
        metadata={"choices": SPAN_CHOICES, "aliases": {"image_markers_are_image": ["--image-markers"]}},
    )
    """The span choices of the statistic (:class:`aia.core.spans.SpanConfig`), one flag per field (with --config:
    the run's ``spans``)."""
    prompts: PromptConfig = field(
        default_factory=PromptConfig,
        metadata={
            # the fields that shape a profiled sequence (the others, generation labels and the
            # CFG drop rate, are training choices)
            "only": ("system_prompt", "image_placement", "turn_separator", "answer_space", "question_suffix"),
            "choices": {"image_placement": IMAGE_PLACEMENTS, "turn_separator": TURN_SEPARATORS},
        },
    )
    """The prompt choices (:class:`aia.adapters.prompts.PromptConfig`) that shape a sequence; unset ones: the
    family's (with --config: the run's ``prompts``)."""
    runtime: Runtime = field(default_factory=Runtime)
    """Device, dtype, progress bar."""


@dataclass(kw_only=True)
class GenerateOptions:
    """``aia generate``: text -> image with a saved model, in a benchmark's layout (:mod:`aia.evaluate.generate`)."""

    model_dir: str = field(metadata=_POSITIONAL)
    """Directory of a saved model (e.g. aia train's final/) whose family generates images."""
    prompts: str
    """GenEval metadata .jsonl, WISE .json, a .txt (one prompt per line), or DPG-Bench's folder."""
    out: str
    """Output folder (resumable with the same model, prompts and settings: prompts already written are skipped)."""
    format: str = field(default="plain", metadata={"choices": FORMATS})
    """Output layout: plain, geneval, dpg or wise, as each benchmark's scorer reads it (GLM-Image: plain only, its images as token files)."""
    images_per_prompt: int | None = None
    """Images per prompt (default: 4 for geneval and dpg, 1 for plain and wise)."""
    guidance: float | None = None
    """Classifier-free guidance weight, 1 = none (default: the family's: Janus 5, Emu3 3, demo and GLM-Image 1)."""
    temperature: float | None = None
    """Sampling temperature, 0 = greedy (default: the family's: Janus, Emu3 and demo 1, GLM-Image its checkpoint's)."""
    top_k: int | None = None
    """Sample among the k most likely tokens (default: the family's: Emu3 2048, Janus and demo all, GLM-Image its checkpoint's)."""
    top_p: float | None = None
    """Then sample in the nucleus: the fewest most likely tokens whose probability reaches p, in (0, 1], 1 = no cut (default: the family's: Janus, Emu3 and demo none, GLM-Image its checkpoint's)."""
    seed: int = 0
    """Images are seeded from (seed, prompt index, image index): same seed, same images."""
    positive_prompt: str | None = field(default=None, metadata={"group": "Emu3 only"})
    """Appended to every prompt (default: Emu3-Gen's ' masterpiece, film grained, best quality.'; '' for none)."""
    negative_prompt: str | None = field(default=None, metadata={"group": "Emu3 only"})
    """The guidance's negative prompt (default: Emu3-Gen's)."""
    image_area: int | None = field(default=None, metadata={"group": "Emu3 and GLM-Image only"})
    """Pixels of a generated image (default: Emu3 the processor's, at most its max_pixels; GLM-Image 1024x1024)."""
    ratio: str = field(default="1:1", metadata={"group": "Emu3 and GLM-Image only"})
    """Aspect ratio width:height."""
    batch_size: int = 1
    """Images generated together (any prompts); does not change the images."""
    overwrite: bool = False
    """Start --out over (needed when the model, the prompts or a setting changed)."""
    runtime: Runtime = field(default_factory=Runtime)
    """Device, dtype, progress bar."""


@dataclass(kw_only=True)
class AnswerOptions:
    """``aia answer``: image -> text on a benchmark's official local files, greedy (:mod:`aia.evaluate.answer`)."""

    model_dir: str = field(metadata=_POSITIONAL)
    """Directory of a saved model (e.g. aia train's final/)."""
    bench: str = field(metadata={"choices": BENCHES})
    """The benchmark (custom: your own questions, see aia.evaluate.answer)."""
    data: str
    """The benchmark's files (see aia.evaluate.answer)."""
    image_dir: str | None = None
    """Images kept apart from the questions (POPE: COCO val2014; default: beside the questions)."""
    out: str
    """Predictions JSONL (resumable with the same model, questions and settings: answered ids are skipped)."""
    max_new_tokens: int = 128
    """The most tokens per answer (greedy decoding stops at end-of-sequence)."""
    limit: int | None = None
    """Answer only the first N questions (default: all)."""
    batch_size: int = 1
    """Questions per generate call (left padding)."""
    overwrite: bool = False
    """Start this benchmark's rows of --out over (needed when the model, the questions or a setting changed)."""
    runtime: Runtime = field(default_factory=Runtime)
    """Device, dtype, progress bar."""


@dataclass(kw_only=True)
class ScoreOptions:
    """``aia score``: score predictions the official way; ``--compare`` gives AIA - baseline with SEs."""

    predictions: str = field(metadata=_POSITIONAL)
    """Predictions JSONL written by aia answer (the baseline with --compare)."""
    bench: str | None = None
    """pope, mme, mmmu or mmvp (default: the one the file names)."""
    compare: str | None = None
    """A second predictions file (the AIA run): paired differences (default: none)."""
    mmmu_parser: str = field(default="mmmu", metadata={"choices": ("mmmu", "aia")})
    """MMMU multiple choice: the benchmark's parser, or the released AIA pipeline's."""
    out: str | None = None
    """Also write every number here, as JSON (default: print only)."""
