"""The one record encoder: a data record -> the model's input sequence, with one preprocessing policy.

``aia train`` (:class:`aia.training.streams.TaskStream`), ``aia profile`` (teacher forcing and
decoding, :mod:`aia.measure`) and ``aia answer`` (:mod:`aia.evaluate.answer`) all turn a record
into an :class:`~aia.adapters.base.Example` through :class:`RecordEncoder`, so a record profiled
with a run's settings (``aia profile --config RUN.yaml``) is, token for token and pixel for
pixel, the sample that run trained on. The policy (:class:`Preprocessing`) is:

1. **containment** (``image_root``): the record's image path must resolve inside this folder
   (symbolic links and ``..`` followed), else the record is rejected (:class:`~aia.errors.DataError`);
2. **image transform** (:func:`image_transform`), applied to the loaded image before the family's
   processor: ``image_area`` (Emu3's proportional resize, both tasks), then for generation
   ``gen_image_transform="center_crop"`` (the released Janus crop to the processor's square size);
   with neither the adapter reads the image itself;
3. the **adapter's** ``encode`` (chat format, image tokens, roles, labels);
4. the **length policy** (:class:`LengthPolicy`): what happens to a sample longer than
   ``max_length`` tokens.

The adapter is duck-typed (``encode``, ``processor``): this module sits below :mod:`aia.adapters`,
which imports :mod:`aia.data`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from aia.core.spans import Role
from aia.data.images import center_crop, resize_to_area
from aia.data.records import image_path, load_image
from aia.errors import ConfigError, DataError

__all__ = [
    "GEN_IMAGE_TRANSFORMS",
    "OVER_LONG",
    "LengthPolicy",
    "OverLong",
    "Preprocessing",
    "cut_prompt",
    "RecordEncoder",
    "contained",
    "image_transform",
    "prompt_part",
    "question_record",
    "square_size",
    "truncate",
]

#: values of ``gen_image_transform`` (``data.gen_image_transform``)
GEN_IMAGE_TRANSFORMS = ("processor", "center_crop")
#: values of :attr:`LengthPolicy.over_long`
OVER_LONG = ("truncate", "skip", "truncate-no-aia")


class OverLong(DataError):
    """A sample that the length policy drops (the message says why); counted like a bad record."""


def truncate(example, max_length: int):
    """``example`` cut to ``max_length`` tokens, or ``None`` if that would cut its image
    (an :class:`~aia.adapters.base.Example`; the same object when it already fits)."""
    if len(example) <= max_length:
        return example
    image = (example.roles == Role.IMAGE) | (example.roles == Role.IMAGE_MARKER)
    last_image = int(image.nonzero().max()) if image.any() else -1
    if last_image >= max_length:
        return None
    return replace(
        example,
        input_ids=example.input_ids[:max_length],
        roles=example.roles[:max_length],
        labels=example.labels[:max_length],
    )


def cut_prompt(example, length: int):
    """A generation ``example`` whose prompt (the positions before its first image token) has
    ``length`` tokens or more, cut to its first ``length``; the last one kept takes the place of
    the image's opening marker (role IMAGE_MARKER: it predicts the first code and is no key), as
    the released trainer keeps the first 1000 of an over-long prompt, ``<begin_of_image>`` lost,
    with ``front = [0, 999]`` (``trainer_t2i.py:179-182``). The same object when it is shorter."""
    import torch

    image = (example.roles == Role.IMAGE).nonzero()
    start = int(image[0]) if len(image) else len(example)  # the prompt, through its opening marker
    if start < length:
        return example
    roles = torch.cat([example.roles[:length], example.roles[start:]])
    roles[length - 1] = int(Role.IMAGE_MARKER)
    return replace(
        example,
        input_ids=torch.cat([example.input_ids[:length], example.input_ids[start:]]),
        roles=roles,
        labels=torch.cat([example.labels[:length], example.labels[start:]]),
    )


@dataclass(frozen=True)
class LengthPolicy:
    """What happens to a sample longer than ``max_length`` tokens.

    Attributes:
        max_length: longest sample in tokens (None: no limit).
        over_long: ``truncate`` (``aia train``'s: cut after the image, drop the sample when the cut
            would reach its image; :func:`truncate`), ``skip`` (drop every longer sample; what
            ``aia profile`` does without a run config, as positions beyond the model's range give
            meaningless attention) or ``truncate-no-aia`` (the released trainer's rule for
            understanding, ``trainer_t2i.py:214-219``: a sample of ``max_length`` tokens or more
            is cut to its first ``max_length`` and keeps its NTP loss but no AIA term,
            ``Example.aia_off``; a cut that would reach the image drops it; generation samples as
            ``truncate``).
        gen_prompt_length: a generation prompt of this many tokens or more is cut first
            (:func:`cut_prompt`), whatever ``over_long`` (None: only ``max_length`` applies).
    """

    max_length: int | None = None
    over_long: str = "truncate"
    gen_prompt_length: int | None = None

    def __post_init__(self):
        if self.over_long not in OVER_LONG:
            raise ValueError(f"over_long must be one of {OVER_LONG}, got {self.over_long!r}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.gen_prompt_length is not None and self.gen_prompt_length < 2:
            raise ValueError(f"gen_prompt_length must be >= 2, got {self.gen_prompt_length}")

    def fit(self, example):
        """``example`` as the policy keeps it: itself when it fits, else cut (a new object).

        Raises:
            OverLong: the policy drops it.
        """
        if self.gen_prompt_length is not None and example.task == "gen":
            example = cut_prompt(example, self.gen_prompt_length)
        limit = self.max_length
        if self.over_long == "truncate-no-aia" and limit is not None and example.task == "und":
            if len(example) >= limit:  # `seq_len >= input_token_max_len` (trainer_t2i.py:214)
                cut = truncate(example, limit)
                if cut is None:
                    raise OverLong(f"too long ({len(example)} > {limit} tokens) to fit its image")
                return replace(cut, aia_off=True)
        if limit is None or len(example) <= limit:
            return example
        if self.over_long == "skip":
            raise OverLong(f"too long: {len(example)} tokens > max_length {limit}")
        cut = truncate(example, limit)
        if cut is None:
            raise OverLong(f"too long ({len(example)} > {limit} tokens) to fit its image")
        return cut


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing policy of a record (see the module docstring); a run's is
    :meth:`from_data_config` of its ``data`` section.

    Attributes:
        image_area: resize every image to about this many pixels first (None: no resize).
        gen_image_transform: generation images: ``processor`` (the processor's own resize) or
            ``center_crop`` (the released Janus crop to the processor's square size).
        image_root: every image must lie inside this folder (None: anywhere).
        length: the length policy.
    """

    image_area: int | None = None
    gen_image_transform: str = "processor"
    image_root: str | Path | None = None
    length: LengthPolicy = field(default_factory=LengthPolicy)

    def __post_init__(self):
        if self.gen_image_transform not in GEN_IMAGE_TRANSFORMS:
            raise ValueError(
                f"gen_image_transform must be one of {GEN_IMAGE_TRANSFORMS}, got {self.gen_image_transform!r}"
            )
        if self.image_area is not None and self.image_area < 1:
            raise ValueError(f"image_area must be >= 1, got {self.image_area}")

    @classmethod
    def from_data_config(cls, data) -> Preprocessing:
        """The policy of a run's ``data`` section (:class:`aia.training.config.DataConfig`: its
        ``image_area``, ``gen_image_transform``, ``image_root``, ``max_length``, ``over_long`` and
        ``gen_prompt_length``)."""
        return cls(
            image_area=data.image_area,
            gen_image_transform=data.gen_image_transform,
            image_root=data.image_root,
            length=LengthPolicy(data.max_length, data.over_long, data.gen_prompt_length),
        )

    def to_dict(self) -> dict:
        """The policy as a JSON object (recorded in a profile's settings)."""
        out = asdict(self)
        out["image_root"] = None if self.image_root is None else str(self.image_root)
        return out


def contained(path: Path, root: Path) -> Path:
    """``path`` if it resolves inside ``root`` (symbolic links and ``..`` followed).

    Raises:
        DataError: it points outside ``root``.
    """
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"image {path} lies outside data.image_root {root}")
    return resolved


def square_size(image_processor) -> int | None:
    """The fixed square output size of an image processor (``crop_size``, else ``size`` as
    height = width or ``shortest_edge``), or None if it has none (e.g. Emu3's dynamic size)."""

    def get(size, key):
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    for attr in ("crop_size", "size"):
        size = getattr(image_processor, attr, None)
        if size is None:
            continue
        height, width = get(size, "height"), get(size, "width")
        if height is not None and height == width:
            return int(height)
        if attr == "size" and height is None and get(size, "shortest_edge") is not None:
            return int(get(size, "shortest_edge"))
    return None


def image_transform(policy: Preprocessing, task: str, processor) -> Callable | None:
    """The PIL transform ``task``'s images get before the processor (``image_area``, then for
    generation ``gen_image_transform``), or None when there is none.

    Raises:
        ConfigError: ``center_crop`` with a processor that has no fixed square size.
    """
    steps: list[Callable] = []
    if policy.image_area is not None:
        steps.append(functools.partial(resize_to_area, area=policy.image_area))
    if task == "gen" and policy.gen_image_transform == "center_crop":
        size = square_size(getattr(processor, "image_processor", processor))
        if size is None:
            raise ConfigError(
                "data.gen_image_transform: center_crop needs an image processor with a fixed square size; "
                f"{type(processor).__name__} has none (use processor)"
            )
        steps.append(functools.partial(center_crop, size=size))
    if not steps:
        return None
    return functools.reduce(lambda f, g: lambda image: g(f(image)), steps)


#: ``RecordEncoder(transform=...)`` not given: the transform is the policy's (None means no transform)
_FROM_POLICY = object()


class RecordEncoder:
    """Encodes the records of one task of one data file with one :class:`Preprocessing` policy.

    Args:
        adapter: the model family's adapter (``encode(record, task, base_dir, image=, cfg_blank=)``,
            ``processor``, ``tasks``, ``task_refusal`` and ``model_class``).
        task: ``"und"`` or ``"gen"``.
        base_dir: the data file's folder (image paths are relative to it).
        policy: the preprocessing policy.
        transform: a PIL image -> PIL image function that replaces the policy's image transform
            (None: no transform).

    Raises:
        InputError: the family does not take ``task`` (one of the adapter's ``tasks``).
    """

    def __init__(
        self,
        adapter,
        task: str,
        base_dir: str | Path | None,
        policy: Preprocessing = Preprocessing(),
        *,
        transform: Callable | None | object = _FROM_POLICY,
    ):
        if task not in adapter.tasks:  # before any record is read
            from aia.errors import InputError

            raise InputError(adapter.task_refusal(task, adapter.model_class), field="task")
        self.adapter, self.task, self.policy = adapter, task, policy
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.transform = image_transform(policy, task, adapter.processor) if transform is _FROM_POLICY else transform
        self.root = Path(policy.image_root).resolve() if policy.image_root is not None else None

    @property
    def length(self) -> LengthPolicy:
        return self.policy.length

    def encode(self, record: dict, *, cfg_blank: bool = False, image=None):
        """The adapter's encoding of ``record`` with the policy's image steps (no length policy).

        ``image`` (a PIL image) stands for the record's image file (``aia answer``'s questions);
        it is transformed like a file's image, and no path is checked.

        Raises:
            DataError: the image lies outside ``image_root`` or the record is malformed;
            ImageError: the image is missing or unreadable.
        """
        if image is None and (self.root is not None or self.transform is not None):
            path = image_path(record, self.base_dir)
            if self.root is not None:
                contained(path, self.root)
            if self.transform is not None:
                image = load_image(path)
        if image is not None and self.transform is not None:
            image = self.transform(image)
        return self.adapter.encode(record, self.task, self.base_dir, image=image, cfg_blank=cfg_blank)

    def __call__(self, record: dict, *, cfg_blank: bool = False, image=None):
        """:meth:`encode` then the length policy: the sample as it is trained or measured.

        Raises:
            OverLong: the length policy drops it; and what :meth:`encode` raises.
        """
        return self.length.fit(self.encode(record, cfg_blank=cfg_blank, image=image))


def prompt_part(example):
    """``example`` cut before its first supervised position (where generation starts: the
    answer of the first turn, or the image tokens after their framing), with no targets left.

    Labels hold token ids (>= 0) where supervised and the adapters' negative ignore index elsewhere.

    Raises:
        DataError: the example has no supervised position (nothing to generate).
    """
    supervised = (example.labels >= 0).nonzero()
    if len(supervised) == 0:
        raise DataError("the record has nothing to generate (no supervised position)")
    start = int(supervised[0])
    return replace(
        example,
        input_ids=example.input_ids[:start],
        roles=example.roles[:start],
        labels=example.labels[:start],
    )


def question_record(question: str) -> dict:
    """An understanding record of one ``question`` about an image given apart (``aia answer``):
    the answer is a stand-in that :func:`prompt_part` cuts off."""
    return {"image": "-", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "-"}]}
