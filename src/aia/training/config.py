"""Typed run configuration of ``aia train``: one dataclass per concern, read from YAML.

A config file mirrors the dataclasses below (sections ``model``, ``lora``, ``data``,
``aia``, ``spans``, ``optim``, ``train``); command-line overrides use dotted keys
(``aia.enabled=false spans.predictive=true``), their values parsed as YAML scalars.
Unknown keys and values of the wrong type or out of range fail at load, with a message
that names the key, before any model is loaded. Each field is documented once, where it
is defined (the ``spans`` section is :class:`aia.core.spans.SpanConfig` itself);
``aia train --help-config`` prints these texts. The reading and checking of YAML values is
:mod:`aia.fields`, shared with the eval file of ``aia eval``. The run's length is
``train.max_steps`` or ``train.epochs``: a file sets at most one, and an override of either
replaces the other (the later override wins).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aia.adapters.prompts import PromptConfig
from aia.core.spans import SpanConfig
from aia.errors import ConfigError
from aia.fields import Raw, describe, from_mapping
from aia.options import DTYPES, dtype_name

__all__ = [
    "AIAConfig",
    "ConfigError",
    "DataConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SpanConfig",
    "TrainConfig",
    "config_help",
    "load_config",
]

MIXINGS = ("both", "random", "alternate")
"""The values of ``data.mixing``."""

DEFAULT_MAX_STEPS = 1000
"""Run length when neither ``train.max_steps`` nor ``train.epochs`` is set."""


@dataclass
class ModelConfig:
    path: str = ""
    """Directory of a saved transformers model and its processor (``save_pretrained``)."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16 (or bf16, fp16, fp32; in half precision the optimizer runs
    in it too; prefer float32 weights + ``train.mixed_precision=bf16`` when memory allows)."""
    frozen: list[str] | None = None
    """Parameter-name substrings to freeze. Default (null): the released AIA code's frozen set,
    the VQ tokenizer and the understanding vision tower (``vqmodel``, ``vision_model``); the
    LLM, aligners and generation embedding/head trained."""
    gradient_checkpointing: bool = False
    """Non-reentrant activation checkpointing of the decoder layers."""
    attn_method: str = "auto"
    """AIA intensity route: auto, sdpa (indicator column, CPU+GPU) or flex (CUDA)."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (PEFT) on the language model instead of its full weights."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA alpha."""
    dropout: float = 0.05
    """LoRA dropout."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters."""


@dataclass
class DataConfig:
    und: str | None = None
    """Understanding data (JSON, JSONL or parquet; image paths relative to the file)."""
    gen: str | None = None
    """Generation data (same format)."""
    ratio_und: int = 1
    """Understanding share of the task mix (see ``data.mixing``): micro-batches per accumulation
    round under ``both``, relative probability under ``random``, steps per cycle under ``alternate``."""
    ratio_gen: int = 1
    """Generation share of the task mix (as ``ratio_und``). The released Janus-Pro config's
    ``sample_ratio`` is 10:10 (``t2i_generation.yml:41,44``)."""
    mixing: str = "both"
    """How tasks share optimizer steps; the same on every rank and on resume, a pure function of
    (seed, step) (:func:`aia.training.streams.step_schedule`). ``both``: every step is
    ``grad_accum`` rounds of ``ratio_und`` understanding then ``ratio_gen`` generation
    micro-batches. ``random`` (released, ``trainer_t2i.py:160``): each step is one task, drawn
    with probabilities ratio_und:ratio_gen by a generator seeded with (train.seed, step), and
    ``grad_accum`` micro-batches of it. ``alternate``: each step is one task, in a fixed cycle
    of ratio_und understanding steps then ratio_gen generation steps."""
    batch_size: int = 4
    """Samples per micro-batch, per task, per process (the released Janus-Pro config: 4)."""
    cfg_drop: float | None = None
    """Share of generation prompts blanked for classifier-free guidance (they carry no AIA term). Default
    (null): ``prompts.cfg_drop`` if set, else the family's (Janus, Chameleon 0.1 as the released AIA code;
    Emu3 0.05, its fine-tuning's null_prompt_prob)."""
    max_length: int = 4096
    """Longest sequence; what happens to a longer sample is ``data.over_long``."""
    over_long: str = "truncate"
    """A sample longer than ``max_length``: ``truncate`` = cut after its image, keeping its AIA term on
    what remains (a sample whose image would be cut is dropped and counted); ``skip`` = dropped and
    counted; ``truncate-no-aia`` = an understanding sample of ``max_length`` tokens or more is cut to its
    first ``max_length`` and keeps its NTP loss but no AIA term, as the released trainer does at its
    3000-token width (``trainer_t2i.py:214-219``), generation samples as ``truncate``."""
    gen_prompt_length: int | None = None
    """Generation: a prompt (BOS through the image's opening marker) of this many tokens or more keeps
    its first ones, the last kept one taking the opening marker's place (it predicts the first code and
    is no key), as the released trainer's 1000-token prompt width does (``trainer_t2i.py:146,179-182``);
    then ``max_length`` applies. null: no separate prompt limit."""
    max_bad_fraction: float = 0.05
    """Stop with an error if more than this share of a file's samples is unusable (missing or
    unreadable image, no image, too long)."""
    padding_side: str = "right"
    """Padding side of micro-batches: right or left."""
    image_root: str | None = None
    """Containment for shared data sets: every image path (relative to its data file, or absolute) must
    resolve inside this folder, else the record is rejected and counted. Default (null): image paths may
    point anywhere the user can read, as for any local tool."""
    cache_examples: bool = False
    """Keep every sample encoded by the validation pass in memory and reuse it in every epoch
    instead of re-reading and re-encoding it (CFG-blanked prompts are still encoded when drawn).
    Fast for small data or token-only models; memory grows with the data (pixel values included)."""
    gen_image_transform: str = "processor"
    """Generation images before the processor: ``processor`` (the processor's own resize, e.g.
    Janus's long side to 384 and pad to a square) or ``center_crop`` (the released Janus code,
    ``t2i_dataset.py:15-29,38``: resize the shorter side to the processor's image size, bicubic
    after box halving, and keep the central square; :func:`aia.data.images.center_crop`).
    ``center_crop`` needs a processor with a fixed square size (Janus, Chameleon)."""
    image_area: int | None = None
    """Resize every image (both tasks), keeping its aspect ratio, to about this many pixels
    before ``gen_image_transform`` and the processor (:func:`aia.data.images.resize_to_area`;
    Emu3's recipe: 720*720 = 518400). null: no resize."""


@dataclass
class AIAConfig:
    enabled: bool = True
    """Add the AIA loss. false gives the exact NTP-only baseline."""
    targets: str = "janus-pro-released"
    """Target profile: a preset or a YAML file from ``aia targets``, mapped to the model's depth by
    ``aia.layer_map`` when it differs. Presets: ``janus-pro-released`` (the bands the released code
    trains with, ``modeling_vlm.py:295-303,346-353``), ``janus-pro`` (paper Table S5: understanding
    layer 20 at 0.30, where the release has 0.15), ``emu3`` (Table S4)."""
    layer_map: str = "relative"
    """How targets written for another depth meet the model (Janus-Pro-1B: 24 layers, the targets
    30): ``relative`` = layer l takes source layer floor((l + 0.5) * L_targets / L_model), by relative
    depth (our choice; the release never ran another depth); ``absolute`` = layer l takes source layer
    min(l, L_targets - 1), as the released code's bands are written by layer index
    (``modeling_vlm.py:295-303,346-353``)."""
    weight_und: float = 10.0
    """lambda for understanding batches (released Janus-Pro code: 10)."""
    weight_gen: float = 5.0
    """lambda for generation batches (released Janus-Pro code: 5)."""
    mode: str = "huber"
    """huber (paper) or mse (the paper's w/o-Huber ablation)."""
    denominator: str = "all"
    """What a task's AIA loss is averaged over besides the layers: ``all`` = every sample of the
    global batch, those without the term (CFG-blanked, over-long) adding 0, as the released code
    divides by layers x samples (``modeling_vlm.py:306-310,358-361``); ``enabled`` = only the samples
    that carry the term."""


@dataclass
class OptimConfig:
    lr: float = 2e-5
    """Peak learning rate (released Janus-Pro: 2e-5)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    eps: float = 1e-6
    """AdamW eps."""
    weight_decay: float = 0.05
    """AdamW weight decay (matrices only; biases and norms get none)."""
    scheduler: str = "cosine"
    """LR curve after the warm-up, the released code's (``trainer/utils/scheduler.py:15-29``), with
    ``it`` the 0-based step, ``W`` the warm-up steps, ``S`` the run's steps: warm-up
    ``(it + 1) / W * (lr - min_lr) + min_lr`` while ``it < W``; then ``cosine``:
    ``min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * (it - W) / (S - W)))``; ``linear``:
    ``min_lr + (lr - min_lr) * (S - it) / (S - W)``; ``constant_with_warmup``: ``lr``;
    ``constant``: ``lr`` at every step, no warm-up (:mod:`aia.training.schedule`)."""
    min_lr: float = 1e-6
    """The LR floor: where the warm-up starts and the decay ends (released: ``minimum_lr=1.0e-6``,
    ``trainer/utils/scheduler.py:15``). Must not exceed ``lr`` (except under ``constant``)."""
    warmup_ratio: float | None = None
    """Warm-up as a share of the run's steps: ``W = warmup_ratio * S``. Set at most one of
    ``warmup_ratio``, ``warmup_steps``, ``warmup_epochs``; none: no warm-up."""
    warmup_steps: int | None = None
    """Warm-up in optimizer steps: ``W = warmup_steps``."""
    warmup_epochs: float | None = None
    """Warm-up in epochs (released: 0.1, ``t2i_generation.yml:17``): ``W = warmup_epochs *
    steps_per_epoch`` (``trainer/__init__.py:12``), fractional as released; the epoch is defined
    at ``train.epochs``."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/aia"
    """Where checkpoints, metrics.jsonl and TensorBoard events go."""
    max_steps: int | None = None
    """Optimizer steps. A config file sets this or ``train.epochs``, not both; neither: 1000. An override
    of either on the command line replaces the other (``aia train janus-pro-1b.yaml train.max_steps=50``
    runs 50 steps although the file says ``epochs: 4``); given both, the later override wins."""
    epochs: float | None = None
    """Run length in epochs (released: ``max_epochs: 4``, ``t2i_generation.yml:16``), run as
    ``int(epochs * steps_per_epoch)`` steps (``train.py:49``). One epoch is the released
    ``len(gen loader) // p_gen`` (``trainer_t2i.py:70,74``) on our streams: with N usable samples
    of the reference task (generation if the run has generation data, else understanding) and
    W processes, ``steps_per_epoch = (ceil(N / W) // batch_size) // m``, where ``m`` is the
    task's micro-batches per step (``grad_accum * ratio`` under ``data.mixing=both``, else
    ``grad_accum * ratio / (ratio_und + ratio_gen)``) (:mod:`aia.training.schedule`). An override
    ``train.epochs=E`` replaces the file's ``train.max_steps`` (as ``train.max_steps`` does this)."""
    grad_accum: int = 1
    """Accumulation rounds per optimizer step (under ``data.mixing=both`` each round is ratio_und +
    ratio_gen micro-batches; under ``random``/``alternate`` one micro-batch of the step's task)."""
    seed: int = 0
    """Seed of initialisation-independent randomness: data order, CFG blanking, the task draw of
    ``data.mixing=random``, dropout."""
    mixed_precision: str = "no"
    """accelerate mixed precision: no, bf16 or fp16 (overrides an accelerate launch config's
    ``mixed_precision``)."""
    log_every: int = 1
    """Log losses every N steps."""
    intensity_every: int = 10
    """Log per-layer intensities every N steps."""
    save_every: int = 0
    """Save a checkpoint every N steps (0: only at the end)."""
    save_total_limit: int = 2
    """Keep this many checkpoints (older ones are deleted)."""
    resume: bool = True
    """Resume from the latest checkpoint in output_dir if there is one. false starts over:
    earlier ``checkpoint-*`` folders there are removed."""
    progress: bool = True
    """Show a progress bar."""
    skip_nonfinite: int = 0
    """How many optimizer steps in a row may have a NaN or infinite gradient norm and be skipped:
    their update is dropped (parameters and optimizer state unchanged), their data and LR step are
    used up, and their metrics row says ``skipped``. One more stops the run. 0: the first such step
    stops it (nothing is saved from it). Not with DeepSpeed (its engine steps inside backward) or
    fp16 (its gradient scaler skips such steps itself)."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aia: AIAConfig = field(default_factory=AIAConfig)
    spans: SpanConfig = field(default_factory=SpanConfig)
    """Query/key span choices of the AIA statistic (:class:`aia.core.spans.SpanConfig`)."""
    prompts: PromptConfig = field(default_factory=PromptConfig)
    """Prompt choices where the sources differ (:class:`aia.adapters.prompts.PromptConfig`); null fields
    take the family's defaults, which equal the checkpoint's own chat template."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, check_paths: bool = True) -> RunConfig:
        """Check ranges and (optionally) that the model and data paths exist. Returns self.

        With neither ``train.max_steps`` nor ``train.epochs`` set, ``train.max_steps`` becomes 1000.
        """
        _check_values(self)
        if self.train.max_steps is None and self.train.epochs is None:
            self.train.max_steps = DEFAULT_MAX_STEPS
        if check_paths:
            if not self.model.path:
                raise ConfigError("model.path: required (a directory written by save_pretrained)")
            if not (Path(self.model.path) / "config.json").is_file():
                raise ConfigError(f"model.path: no saved model (config.json) in {self.model.path!r}")
            for key in ("und", "gen"):
                path = getattr(self.data, key)
                if path and not Path(path).is_file():
                    raise ConfigError(f"data.{key}: no such file {path!r}")
            targets = self.aia.targets
            if self.aia.enabled and targets.endswith((".yaml", ".yml")) and not Path(targets).is_file():
                raise ConfigError(f"aia.targets: no such file {targets!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_values(cfg: RunConfig) -> None:
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}, got {_get(cfg, key)!r}")

    try:
        dtype = dtype_name(cfg.model.dtype)
    except ValueError:
        dtype = None
    need(dtype is not None, "model.dtype", f"must be {', '.join(DTYPES)} (or bf16, fp16, fp32)")
    cfg.model.dtype = dtype
    need(cfg.model.attn_method in ("auto", "sdpa", "flex"), "model.attn_method", "must be auto, sdpa or flex")
    need(cfg.lora.r >= 1, "lora.r", "must be >= 1")
    need(0 <= cfg.lora.dropout < 1, "lora.dropout", "must be in [0, 1)")
    if not (cfg.data.und or cfg.data.gen):
        raise ConfigError("data.und / data.gen: give at least one data file")
    need(cfg.data.ratio_und >= 0, "data.ratio_und", "must be >= 0")
    need(cfg.data.ratio_gen >= 0, "data.ratio_gen", "must be >= 0")
    if not ((cfg.data.und and cfg.data.ratio_und > 0) or (cfg.data.gen and cfg.data.ratio_gen > 0)):
        raise ConfigError("data.ratio_und / data.ratio_gen: no task with a data file has a ratio > 0")
    need(cfg.data.batch_size >= 1, "data.batch_size", "must be >= 1")
    need(cfg.data.cfg_drop is None or 0 <= cfg.data.cfg_drop < 1, "data.cfg_drop", "must be in [0, 1)")
    need(cfg.data.max_length >= 8, "data.max_length", "must be >= 8")
    need(cfg.data.over_long in ("truncate", "skip", "truncate-no-aia"), "data.over_long",
         "must be truncate, skip or truncate-no-aia")
    need(cfg.data.gen_prompt_length is None or cfg.data.gen_prompt_length >= 2, "data.gen_prompt_length",
         "must be >= 2 or null")
    need(0 <= cfg.data.max_bad_fraction <= 1, "data.max_bad_fraction", "must be in [0, 1]")
    need(cfg.data.padding_side in ("left", "right"), "data.padding_side", "must be left or right")
    need(cfg.data.mixing in MIXINGS, "data.mixing", f"must be one of {', '.join(MIXINGS)}")
    transforms = ("processor", "center_crop")
    need(cfg.data.gen_image_transform in transforms, "data.gen_image_transform", "must be processor or center_crop")
    need(cfg.data.image_area is None or cfg.data.image_area >= 1, "data.image_area", "must be >= 1 or null")
    need(cfg.aia.mode in ("huber", "mse"), "aia.mode", "must be huber or mse")
    need(cfg.aia.denominator in ("all", "enabled"), "aia.denominator", "must be all or enabled")
    need(cfg.aia.layer_map in ("relative", "absolute"), "aia.layer_map", "must be relative or absolute")
    need(cfg.aia.weight_und >= 0, "aia.weight_und", "must be >= 0")
    need(cfg.aia.weight_gen >= 0, "aia.weight_gen", "must be >= 0")
    need(cfg.optim.lr >= 0, "optim.lr", "must be >= 0")
    need(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas", "must be two in [0, 1)")
    need(cfg.optim.eps > 0, "optim.eps", "must be > 0")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    schedulers = ("cosine", "linear", "constant", "constant_with_warmup")
    need(cfg.optim.scheduler in schedulers, "optim.scheduler", f"must be one of {', '.join(schedulers)}")
    o = cfg.optim
    need(o.min_lr >= 0, "optim.min_lr", "must be >= 0")
    if o.scheduler != "constant":
        need(o.min_lr <= o.lr, "optim.min_lr", f"must not exceed optim.lr={o.lr} (the floor of the LR curve)")
    warmups = [k for k in ("warmup_ratio", "warmup_steps", "warmup_epochs") if getattr(o, k) is not None]
    if len(warmups) > 1:
        raise ConfigError(
            f"optim.{warmups[0]} / optim.{warmups[1]}: set at most one of optim.warmup_ratio, "
            "optim.warmup_steps, optim.warmup_epochs (the others null)"
        )
    need(o.warmup_ratio is None or 0 <= o.warmup_ratio < 1, "optim.warmup_ratio", "must be in [0, 1)")
    need(o.warmup_steps is None or o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(o.warmup_epochs is None or o.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
    if o.scheduler == "constant" and warmups and getattr(o, warmups[0]) > 0:
        raise ConfigError(
            f"optim.{warmups[0]}: optim.scheduler=constant has no warm-up (use constant_with_warmup, "
            "or set it to 0 or null)"
        )
    need(cfg.optim.max_grad_norm >= 0, "optim.max_grad_norm", "must be >= 0")
    if cfg.train.max_steps is not None and cfg.train.epochs is not None:
        raise ConfigError(
            "train.max_steps / train.epochs: set one of them, not both "
            f"(got {cfg.train.max_steps} and {cfg.train.epochs}; set the other to null, or override one of them)"
        )
    need(cfg.train.max_steps is None or cfg.train.max_steps >= 1, "train.max_steps", "must be >= 1")
    need(cfg.train.epochs is None or cfg.train.epochs > 0, "train.epochs", "must be > 0")
    need(cfg.train.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    need(cfg.train.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision", "must be no, bf16 or fp16")
    need(cfg.train.log_every >= 1, "train.log_every", "must be >= 1")
    need(cfg.train.intensity_every >= 0, "train.intensity_every", "must be >= 0")
    need(cfg.train.save_every >= 0, "train.save_every", "must be >= 0")
    need(cfg.train.save_total_limit >= 1, "train.save_total_limit", "must be >= 1")
    need(cfg.train.skip_nonfinite >= 0, "train.skip_nonfinite", "must be >= 0")
    need(cfg.train.skip_nonfinite == 0 or cfg.train.mixed_precision != "fp16", "train.skip_nonfinite",
         "must be 0 with train.mixed_precision=fp16 (the gradient scaler skips non-finite steps itself)")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}


def _from_dict(data: dict) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(_SECTIONS)})")
    return RunConfig(**{name: from_mapping(type(factory()), data.get(name), name) for name, factory in _SECTIONS.items()})


#: the two ways to give the run's length: an override of one replaces the other (see ``train.max_steps``)
_RUN_LENGTH = ("max_steps", "epochs")


def _apply_override(data: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. aia.enabled=false")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or parts[0] not in _SECTIONS:
        raise ConfigError(f"{key}: overrides take section.field (sections: {', '.join(_SECTIONS)})")
    data.setdefault(parts[0], {})
    if data[parts[0]] is None:
        data[parts[0]] = {}
    section, name = parts
    if section == "train" and name in _RUN_LENGTH and raw.strip().lower() not in ("null", "~", ""):
        other = _RUN_LENGTH[1 - _RUN_LENGTH.index(name)]
        data[section][other] = None  # the length given last wins
    data[section][name] = Raw(raw)


def load_config(path: str | Path | None = None, overrides: list[str] = (), check_paths: bool = True) -> RunConfig:
    """Read a YAML config, apply ``section.field=value`` overrides, validate.

    Relative ``model.path``, ``data.*`` and ``aia.targets`` paths in the file are resolved
    against the file's folder; paths given as overrides are taken as they are.
    """
    data: dict = {}
    base = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config: no such file {str(path)!r}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
        base = path.parent
        for section, key in (("model", "path"), ("data", "und"), ("data", "gen"), ("data", "image_root"), ("aia", "targets")):
            value = (data.get(section) or {}).get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                looks_like_path = section != "aia" or value.endswith((".yaml", ".yml"))
                if looks_like_path:
                    data[section][key] = str(base / value)
    for item in overrides:
        _apply_override(data, item)
    return _from_dict(data).validate(check_paths=check_paths)


def config_help() -> str:
    """Every field with its documentation, as ``section.field (default): text``."""
    return "\n".join(describe(RunConfig))
