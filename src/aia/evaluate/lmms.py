"""An ``aia`` model for lmms-eval: a checkpoint of any family whose adapter answers questions.

With the ``lmms`` extra installed (``pip install "aia[lmms]"``), lmms-eval finds this model
through the Python entry-point group ``lmms_eval.models`` (lmms-eval 0.6 and later), which
names :func:`manifest`::

    lmms-eval --model aia --model_args pretrained=DIR --tasks pope,mme --batch_size 8

``DIR`` is a model directory written by ``save_pretrained`` (a fine-tuned checkpoint, or a
hub checkpoint downloaded first, e.g. ``huggingface-cli download deepseek-community/Janus-Pro-1B
--local-dir DIR``), loaded with :func:`aia.adapters.load_model`. ``--model_args`` also takes
``device`` (default ``cuda`` where available, else ``cpu``; under ``accelerate launch`` each
process takes ``cuda:LOCAL_RANK``), ``dtype`` (``bfloat16``, ``float16``, ``float32``; default
as saved) and ``max_new_tokens`` (overrides every task's own).

**Device and batch size**: give them once, either as lmms-eval's own flags (``--device cpu``,
``--batch_size 8``) or in ``--model_args`` (``device=cpu,batch_size=8``). lmms-eval hands its
flags to the model next to ``--model_args``, which for other models makes a key given both
ways a ``TypeError``; here the ``--model_args`` value is taken (with a warning where two
devices differ), see :meth:`_AIAModel.create_from_arg_string`.

**A failed run exits 0**: lmms-eval catches an error of the evaluation (a model that does not
load, a task that fails), prints it ("Error during evaluation: ...") and exits with status 0.
``python -m aia.evaluate.lmms ARGS`` runs ``python -m lmms_eval ARGS`` and exits 1 when that
line (or a non-zero status) shows up (:func:`run_lmms_eval`), for scripts and CI::

    python -m aia.evaluate.lmms --model aia --model_args pretrained=DIR --device cpu --tasks pope

**Installing**: ``pip install torch==X.Y.Z -e ".[lmms]"`` with your installed torch's version
in the same command, so that pip keeps it while resolving lmms-eval's unpinned ``torchvision``
(the extra pins ``filelock<4``: lmms-eval imports ``filelock._api``, which filelock 4 removed).
PyPI's ``torchvision`` wheels are CUDA builds: next to a CPU torch they fail to load
("operator torchvision::nms does not exist"), and transformers, which imports torchvision
when it is installed, fails with them. Install torchvision from the index your torch came
from (``https://download.pytorch.org/whl/cpu`` for a CPU build) or remove it (``pip
uninstall torchvision``): neither lmms-eval's evaluation loop nor this model needs it.
``tests/evaluate/test_lmms_cli.py`` runs lmms-eval's command line so installed (``.ci/run``).

Requests are answered as :func:`aia.evaluate.answer` answers benchmark questions: the same
prompt building (the family's chat format with the image before the text: the processor's
chat template, else the adapter's format, after ``<bos>``) and the same batched greedy
``generate`` with left padding (Emu3: one image size per ``generate`` call). So an lmms-eval
score and an ``aia eval`` score differ only by the task's prompt and parsing, not by the
inference. lmms-eval's context goes in as the question text, with its ``<image>`` tags
removed (the image is placed by the chat format); a request with several images is
answered with its first (as AIA answers MMMU); a request without one gets a text-only
prompt. The answer is the decoded new tokens (special tokens skipped) cut at the first of
the task's ``until`` strings.

Greedy decoding only: a task's sampling settings (``temperature > 0``, ``do_sample``,
``num_beams > 1``) are ignored with a warning. ``loglikelihood`` (likelihood-scored
multiple choice) and ``generate_until_multi_round`` raise :class:`NotImplementedError`.

This module imports without lmms-eval: the model class :data:`AIA` (a subclass of
lmms-eval's ``lmms``) is built when first looked up, so the core package does not depend on
lmms-eval.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass

__all__ = ["CLASS_PATH", "MODEL_ID", "manifest", "run_lmms_eval"]  # and AIA, built on first lookup (needs lmms-eval)

#: the name ``lmms-eval --model`` takes
MODEL_ID = "aia"
#: where lmms-eval finds the class (built on first lookup by the module's ``__getattr__``)
CLASS_PATH = "aia.evaluate.lmms.AIA"
_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
_NO_LMMS_EVAL = 'lmms-eval is not installed: pip install "aia[lmms]" (or pip install lmms-eval)'


def manifest():
    """The ``lmms_eval.models`` entry point: the ``aia`` model's registration for lmms-eval's registry."""
    try:
        from lmms_eval.models.registry_v2 import ModelManifest
    except ImportError as err:  # lmms-eval < 0.6 has no manifests (it reads LMMS_EVAL_PLUGINS instead)
        raise ImportError(f"the aia plugin needs lmms-eval >= 0.6 (model manifests): {err}") from err
    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


@dataclass
class _Request:
    """What :func:`aia.evaluate.answer._generate` reads of a question: the text and the image."""

    prompt: str
    image: object  # a PIL image

    def load_image(self):
        return self.image


def _to_image(visual):
    """A request's visual as an RGB PIL image (a PIL image or an image file)."""
    from PIL import Image

    from aia.errors import InputError

    if isinstance(visual, Image.Image):
        return visual.convert("RGB")
    if isinstance(visual, str | os.PathLike):
        if str(visual).lower().endswith(_VIDEO_SUFFIXES):
            raise InputError(f"the aia model answers about images, not videos: {visual}")
        from aia.data.records import load_image

        return load_image(visual)
    if isinstance(visual, dict) and isinstance(visual.get("bytes"), bytes):  # a datasets Image feature, undecoded
        import io

        with Image.open(io.BytesIO(visual["bytes"])) as image:
            return image.convert("RGB")
    raise InputError(f"the aia model takes images (PIL images or files), got a {type(visual).__name__}")


def _flat(visuals) -> list:
    if visuals is None:
        return []
    if not isinstance(visuals, list | tuple):
        return [visuals]
    out = []
    for v in visuals:
        out += _flat(v) if isinstance(v, list | tuple) else [v]
    return [v for v in out if v is not None]


def _generate_text_only(model, processor, adapter, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to text-only prompts, batched with left padding (as ``answer._generate``)."""
    from aia.adapters.imagegen import generation_config

    texts, extra = zip(*(adapter.text_prompt(p) for p in prompts), strict=True)
    inputs = processor(text=list(texts), return_tensors="pt", padding=True, padding_side="left",
                       add_special_tokens=False, **extra[0])
    inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    config = generation_config(model, max_new_tokens=max_new_tokens)
    tok = processor.tokenizer
    if config.pad_token_id is None:
        config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = model.generate(**inputs, generation_config=config)
    return tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _cut(text: str, until) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def _positive_int(value, name: str) -> int:
    from aia.errors import InputError

    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1 or (isinstance(value, float) and value != number):
        raise InputError(f"must be a positive integer, got {value!r}", field=name)
    return number


class _AIAModel:
    """The ``aia`` model's behaviour; :data:`AIA` is this class on top of lmms-eval's ``lmms``."""

    is_simple = True

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lmms-eval's constructor: ``--model_args`` (``arg_string``) and lmms-eval's own flags
        (``additional_config``: ``--device``, ``--batch_size``, ...). A key in both is taken from
        ``--model_args`` (lmms-eval would pass it twice), with a warning where two devices differ."""
        given = {kv.split("=", 1)[0].strip(): kv.split("=", 1)[1] for kv in arg_string.split(",") if "=" in kv}
        flags = {}
        for key, value in (additional_config or {}).items():
            if key not in given:
                flags[key] = value
            elif key == "device" and value is not None and str(value) != given[key]:
                warnings.warn(f"aia model: {key}={given[key]} from --model_args, not lmms-eval's {key} {value!r}",
                              stacklevel=2)  # fmt: skip
        return super().create_from_arg_string(arg_string, flags)

    def __init__(self, pretrained: str, device: str | None = None, dtype: str | None = None,
                 batch_size: int | str = 1, max_new_tokens: int | None = None, max_batch_size=None,
                 **kwargs) -> None:
        super().__init__()
        import torch

        from aia.adapters import get_adapter
        from aia.errors import InputError
        from aia.evaluate.generate import resolve_model

        if kwargs:
            warnings.warn(f"aia model: ignoring unknown model_args {sorted(kwargs)}", stacklevel=2)
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            warnings.warn("aia model: batch_size 'auto' is not supported; using 1", stacklevel=2)
            batch_size = 1
        self.batch_size_per_gpu = _positive_int(batch_size, "batch_size")
        self.max_new_tokens = None if max_new_tokens is None else _positive_int(max_new_tokens, "max_new_tokens")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":  # one process per GPU under accelerate launch / torchrun
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        if not os.path.isdir(str(pretrained)):
            raise InputError("pretrained must be a model directory written by save_pretrained (download a hub "
                             "checkpoint first, e.g. huggingface-cli download REPO --local-dir DIR)",
                             path=pretrained, field="pretrained")
        self._device = torch.device(device)
        self._model, self.processor = resolve_model(str(pretrained), device=self._device, dtype=dtype)
        self._model.eval()
        self.adapter = get_adapter(self._model, self.processor)
        self.family = self.adapter.family
        if "und" not in self.adapter.tasks:
            raise InputError(f"the {self.family} family answers no questions (its adapter encodes "
                             f"{', '.join(self.adapter.tasks)} only)", path=pretrained, field="pretrained")
        self._warned: set[str] = set()

    # lmms-eval's usual attributes
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def eot_token_id(self):
        return self.tokenizer.eos_token_id

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"aia model: {message}", stacklevel=3)

    def _max_new_tokens(self, gen_kwargs: dict) -> int:
        from aia.evaluate.answer import MAX_NEW_TOKENS

        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return _positive_int(gen_kwargs.get("max_new_tokens", MAX_NEW_TOKENS), "max_new_tokens")

    def _until(self, gen_kwargs: dict) -> list[str]:
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, list | tuple) or not all(isinstance(u, str) for u in until):
            raise ValueError(f"gen_kwargs['until'] must be a string or a list of strings, got {until!r}")
        return list(until)

    def _check_greedy(self, gen_kwargs: dict) -> None:
        temperature = gen_kwargs.get("temperature") or 0
        if temperature > 0 or gen_kwargs.get("do_sample") or (gen_kwargs.get("num_beams") or 1) > 1:
            self._warn_once("sampling", "greedy decoding only; ignoring the task's sampling settings "
                            f"(temperature={gen_kwargs.get('temperature')}, do_sample={gen_kwargs.get('do_sample')}, "
                            f"num_beams={gen_kwargs.get('num_beams')})")

    def _inputs(self, request) -> tuple[str, object | None]:
        """``(question, image or None)`` of a ``generate_until`` request."""
        context, _, doc_to_visual, doc_id, task, split = request.args[:6]
        visuals = []
        if doc_to_visual is not None:
            visuals = _flat(doc_to_visual(self.task_dict[task][split][doc_id]))
        if len(visuals) > 1:
            self._warn_once("images", "a request has several images; answering with the first (as AIA answers MMMU)")
        question = str(context).replace("<image>", "").strip()
        return question, (_to_image(visuals[0]) if visuals else None)

    def _answer(self, questions: list[str], images: list, max_new_tokens: int) -> list[str]:
        from aia.evaluate.answer import _generate

        answers: list[str | None] = [None] * len(questions)
        with_image = [i for i, image in enumerate(images) if image is not None]
        without = [i for i, image in enumerate(images) if image is None]
        if with_image:
            batch = [_Request(questions[i], images[i]) for i in with_image]
            for i, text in zip(with_image, _generate(self._model, self.processor, batch, max_new_tokens),
                               strict=True):
                answers[i] = text
        if without:
            texts = _generate_text_only(self._model, self.processor, self.adapter, [questions[i] for i in without],
                                        max_new_tokens)
            for i, text in zip(without, texts, strict=True):
                answers[i] = text
        return answers

    def generate_until(self, requests) -> list[str]:
        """Greedy answers to lmms-eval ``generate_until`` requests, ``batch_size`` at a time
        (requests batched only with others of the same generation settings), in request order."""
        import torch
        from tqdm.auto import tqdm

        from aia.evaluate.generate import quiet_transformers

        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items(), key=lambda kv: kv[0])), []).append(i)
        results: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="aia answering", disable=self.rank != 0)
        try:
            with torch.inference_mode(), quiet_transformers():
                for indices in groups.values():
                    gen_kwargs = dict(requests[indices[0]].args[1])
                    self._check_greedy(gen_kwargs)
                    until, max_new_tokens = self._until(gen_kwargs), self._max_new_tokens(gen_kwargs)
                    for start in range(0, len(indices), self.batch_size):
                        chunk = indices[start:start + self.batch_size]
                        questions, images = zip(*(self._inputs(requests[i]) for i in chunk), strict=True)
                        for i, text in zip(chunk, self._answer(list(questions), list(images), max_new_tokens),
                                           strict=True):
                            results[i] = _cut(text, until)
                            self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs),
                                                        results[i])
                        bar.update(len(chunk))
        finally:
            bar.close()
        return results

    def loglikelihood(self, requests):
        raise NotImplementedError(
            "the aia model answers by greedy generation only (generate_until): loglikelihood requests "
            "(multiple choice scored by the options' likelihood) are not supported; use the task's generation "
            "variant")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(
            "the aia model answers single-round requests only (generate_until): multi-round tasks are not supported")


#: what lmms-eval prints when it caught an error of the evaluation (and then exits 0)
LMMS_EVAL_ERROR = "Error during evaluation"


def run_lmms_eval(argv: list[str]) -> int:
    """Run lmms-eval's command line, ``python -m lmms_eval *argv``, passing its output through, and
    return an exit status that says whether it worked: lmms-eval's own, or 1 where it printed
    :data:`LMMS_EVAL_ERROR` (an error it caught; it exits 0 then)."""
    process = subprocess.Popen([sys.executable, "-m", "lmms_eval", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)  # fmt: skip
    failed = False
    for line in process.stdout:
        sys.stdout.write(line)
        failed = failed or LMMS_EVAL_ERROR in line
    status = process.wait()
    if status == 0 and failed:
        print(f"aia: lmms-eval reported an error above ({LMMS_EVAL_ERROR!r}) but exited 0; exit status 1",
              file=sys.stderr)  # fmt: skip
        return 1
    return status


def _build_class():
    import importlib.util

    try:
        from lmms_eval.api.model import lmms
    except ImportError as err:
        if importlib.util.find_spec("lmms_eval") is None:
            raise ImportError(_NO_LMMS_EVAL) from err
        raise ImportError(f"lmms-eval is installed but cannot be imported: {err}") from err

    return type("AIA", (_AIAModel, lmms), {
        "__module__": __name__,
        "__qualname__": "AIA",
        "__doc__": "lmms-eval's ``aia`` model: a Janus, Emu3 or Chameleon model directory answered as "
                   ":func:`aia.evaluate.answer` answers (see :mod:`aia.evaluate.lmms`).",
    })


def __getattr__(name: str):
    if name == "AIA":  # built on first lookup so that the module imports without lmms-eval
        cls = _build_class()
        globals()["AIA"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(run_lmms_eval(sys.argv[1:]))
