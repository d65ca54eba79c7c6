"""Typed run configuration of ``aia train``: one dataclass per concern, read from YAML.

A config file mirrors the dataclasses below (sections ``model``, ``lora``, ``data``,
``aia``, ``spans``, ``optim``, ``train``); command-line overrides use dotted keys
(``aia.enabled=false spans.predictive=true``), their values parsed as YAML scalars.
Unknown keys and values of the wrong type or out of range fail at load, with a message
that names the key, before any model is loaded. Each field is documented once, where it
is defined (the ``spans`` section is :class:`aia.core.spans.SpanConfig` itself);
``aia train --help-config`` prints these texts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aia.core.spans import SpanConfig
from aia.errors import ConfigError
from aia.fields import field_docs

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


@dataclass
class ModelConfig:
    path: str = ""
    """Directory of a saved transformers model and its processor (``save_pretrained``)."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16 (in half precision the optimizer runs in it too; prefer
    float32 weights + ``train.mixed_precision=bf16`` when memory allows)."""
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
    """Understanding micro-batches per accumulation round."""
    ratio_gen: int = 1
    """Generation micro-batches per accumulation round (und:gen = ratio_und:ratio_gen in every
    optimizer step, identical on every rank)."""
    batch_size: int = 4
    """Samples per micro-batch, per task, per process (the released Janus-Pro config: 4)."""
    cfg_drop: float = 0.1
    """Share of generation prompts blanked for classifier-free guidance (they carry no AIA term)."""
    max_length: int = 4096
    """Longest sequence. Longer samples are truncated only after their image; a sample whose
    image would be cut is dropped and counted."""
    max_bad_fraction: float = 0.05
    """Stop with an error if more than this share of a file's samples is unusable (missing or
    unreadable image, no image, too long)."""
    padding_side: str = "right"
    """Padding side of micro-batches: right or left."""
    cache_examples: bool = False
    """Keep every sample encoded by the validation pass in memory and reuse it in every epoch
    instead of re-reading and re-encoding it (CFG-blanked prompts are still encoded when drawn).
    Fast for small data or token-only models; memory grows with the data (pixel values included)."""


@dataclass
class AIAConfig:
    enabled: bool = True
    """Add the AIA loss. false gives the exact NTP-only baseline."""
    targets: str = "janus-pro"
    """Target profile: a preset (janus-pro, emu3) or a YAML file from ``aia targets``; mapped to
    the model's depth by relative depth when it differs."""
    weight_und: float = 10.0
    """lambda for understanding batches (released Janus-Pro code: 10)."""
    weight_gen: float = 5.0
    """lambda for generation batches (released Janus-Pro code: 5)."""
    mode: str = "huber"
    """huber (paper) or mse (the paper's w/o-Huber ablation)."""


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
    """transformers scheduler name: cosine, linear, constant, constant_with_warmup."""
    warmup_ratio: float = 0.1
    """Warm-up share of max_steps."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/aia"
    """Where checkpoints, metrics.jsonl and TensorBoard events go."""
    max_steps: int = 1000
    """Optimizer steps."""
    grad_accum: int = 1
    """Accumulation rounds per optimizer step (each round is ratio_und + ratio_gen micro-batches)."""
    seed: int = 0
    """Seed of initialisation-independent randomness: data order, CFG blanking, dropout."""
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


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aia: AIAConfig = field(default_factory=AIAConfig)
    spans: SpanConfig = field(default_factory=SpanConfig)
    """Query/key span choices of the AIA statistic (:class:`aia.core.spans.SpanConfig`)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, check_paths: bool = True) -> RunConfig:
        """Check ranges and (optionally) that the model and data paths exist. Returns self."""
        _check_values(self)
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

    need(cfg.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype", "must be float32, bfloat16 or float16")
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
    need(0 <= cfg.data.cfg_drop < 1, "data.cfg_drop", "must be in [0, 1)")
    need(cfg.data.max_length >= 8, "data.max_length", "must be >= 8")
    need(0 <= cfg.data.max_bad_fraction <= 1, "data.max_bad_fraction", "must be in [0, 1]")
    need(cfg.data.padding_side in ("left", "right"), "data.padding_side", "must be left or right")
    need(cfg.aia.mode in ("huber", "mse"), "aia.mode", "must be huber or mse")
    need(cfg.aia.weight_und >= 0, "aia.weight_und", "must be >= 0")
    need(cfg.aia.weight_gen >= 0, "aia.weight_gen", "must be >= 0")
    need(cfg.optim.lr >= 0, "optim.lr", "must be >= 0")
    need(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas", "must be two in [0, 1)")
    need(cfg.optim.eps > 0, "optim.eps", "must be > 0")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    schedulers = ("cosine", "linear", "constant", "constant_with_warmup")
    need(cfg.optim.scheduler in schedulers, "optim.scheduler", f"must be one of {', '.join(schedulers)}")
    need(0 <= cfg.optim.warmup_ratio < 1, "optim.warmup_ratio", "must be in [0, 1)")
    need(cfg.optim.max_grad_norm >= 0, "optim.max_grad_norm", "must be >= 0")
    need(cfg.train.max_steps >= 1, "train.max_steps", "must be >= 1")
    need(cfg.train.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    need(cfg.train.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision", "must be no, bf16 or fp16")
    need(cfg.train.log_every >= 1, "train.log_every", "must be >= 1")
    need(cfg.train.intensity_every >= 0, "train.intensity_every", "must be >= 0")
    need(cfg.train.save_every >= 0, "train.save_every", "must be >= 0")
    need(cfg.train.save_total_limit >= 1, "train.save_total_limit", "must be >= 1")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


class _Raw(str):
    """A command-line override value: YAML-parsed unless the field is a string."""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation (a string under ``from __future__``)."""
    tp = eval(annotation, vars(typing) | {"list": list}) if isinstance(annotation, str) else annotation  # noqa: S307
    if isinstance(value, _Raw):
        if tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)):
            if value.strip().lower() not in ("null", "~"):
                return str(value)
        value = yaml.safe_load(value) if value.strip() else ""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            hint = " (YAML reads yes/no/on/off as booleans: quote the word)" if isinstance(value, bool) else ""
            raise ConfigError(f"{key}: expected a string, got {value!r}{hint}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _section(cls, data: Any, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key (known: {', '.join(fields)})")
    values = {name: _coerce(value, fields[name].type, f"{prefix}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except ValueError as err:  # the section's own check (e.g. SpanConfig's)
        named = [name for name in values if name in str(err)]
        key = f"{prefix}.{named[0]}" if named else prefix
        raise ConfigError(f"{key}: {err}") from None


_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}


def _from_dict(data: dict) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(_SECTIONS)})")
    return RunConfig(**{name: _section(type(factory()), data.get(name), name) for name, factory in _SECTIONS.items()})


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
    data[parts[0]][parts[1]] = _Raw(raw)


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
        for section, key in (("model", "path"), ("data", "und"), ("data", "gen"), ("aia", "targets")):
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
    lines = []
    for name, factory in _SECTIONS.items():
        cls = type(factory())
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{name}.{f.name} ({default!r}): {docs.get(f.name, '')}")
    return "\n".join(lines)
