"""The lmms-eval plugin (:mod:`aia.evaluate.lmms`): the module imports without lmms-eval, and its
answering works on a stub of lmms-eval's base class (so CI, without lmms-eval, still runs it); with
lmms-eval installed (else those tests are skipped), the ``aia`` model registers through the entry
point pyproject.toml declares and answers lmms-eval ``generate_until`` requests (built here
directly: lmms-eval's data sets need the hub) on tiny random Janus, Emu3 and Chameleon models
exactly as :func:`aia.evaluate.answer` answers the same questions, and runs through lmms-eval's
own ``simple_evaluate`` on a local task."""

from __future__ import annotations

import importlib
import json
import os
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
from PIL import Image

from aia.evaluate import answer
from aia.testing import tiny_chameleon, tiny_emu3, tiny_janus
from tests.helpers import save_model

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
BUILDERS = {"janus": tiny_janus, "emu3": tiny_emu3, "chameleon": tiny_chameleon}
TASK, SPLIT = "tiny_vqa", "test"
GREEDY = {"max_new_tokens": 6, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}
#: (question as lmms-eval's context, image color, image size); one non-square image
DOCS = [
    ("<image>\nIs there a red thing in the image?\nAnswer the question using a single word or phrase.", "red",
     (32, 32)),
    ("What color is it? Answer the question using a single word or phrase.", "blue", (32, 32)),
    ("Is it round?\nAnswer the question using a single word or phrase.", "green", (40, 32)),
]


def declared_entry_point() -> EntryPoint:
    """The ``lmms_eval.models`` entry point pyproject.toml declares (installed metadata may be older)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    group = "lmms_eval.models"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][group]
    assert list(declared) == ["aia"]
    return EntryPoint(name="aia", value=declared["aia"], group=group)


def test_imports_without_lmms_eval(monkeypatch):
    """The core package does not need lmms-eval: the module imports, the class says what to install."""
    for name in ["lmms_eval", *(n for n in sys.modules if n.startswith("lmms_eval."))]:
        monkeypatch.setitem(sys.modules, name, None)  # any lmms_eval import now fails
    monkeypatch.delitem(sys.modules, "aia.evaluate.lmms", raising=False)
    module = importlib.import_module("aia.evaluate.lmms")
    assert module.MODEL_ID == "aia" and module.CLASS_PATH == "aia.evaluate.lmms.AIA"
    assert declared_entry_point().load() is module.manifest
    with pytest.raises(ImportError, match="lmms-eval"):
        module.AIA  # noqa: B018
    with pytest.raises(ImportError, match="lmms-eval >= 0.6"):
        module.manifest()
    with pytest.raises(AttributeError):
        module.nothing  # noqa: B018


class _StubLmms:
    """What the plugin uses of lmms-eval's ``lmms`` base (rank, cache hook, task_dict)."""

    def __init__(self):
        self._rank, self._world_size, self.task_dict = 0, 1, {}
        self.cache_hook = type("Hook", (), {"add_partial": lambda self, *args: None})()

    @property
    def rank(self):
        return self._rank

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        args = dict(kv.split("=", 1) for kv in arg_string.split(","))
        return cls(**args, **{k: v for k, v in (additional_config or {}).items() if v is not None})


class _Request:
    def __init__(self, request_type, arguments, idx):
        self.request_type, self.args, self.idx = request_type, arguments, idx


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_generate_until_without_lmms_eval(family, model_dirs, tmp_path):
    """The plugin's answering (lmms-eval's base class stubbed), so that CI, which installs no lmms-eval,
    still sees a change of :mod:`aia.evaluate.answer` that would break it."""
    from aia.evaluate import lmms as plugin

    stub = type("AIAStub", (plugin._AIAModel, _StubLmms), {})
    check_matches_answer(stub, family, model_dirs, tmp_path)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_text_only_requests_without_lmms_eval(family, model_dirs):
    """A request without an image is answered from the family adapter's text-only prompt."""
    from aia.adapters import get_adapter
    from aia.evaluate import lmms as plugin

    stub = type("AIAStub", (plugin._AIAModel, _StubLmms), {})
    lm = load(stub, model_dirs[family], docs(), batch_size=2)
    seen = []
    text_prompt = type(lm.adapter).text_prompt
    lm.adapter.text_prompt = lambda question: seen.append(question) or text_prompt(lm.adapter, question)
    text_only = lm.generate_until(requests(visual=lambda doc: []))
    assert len(text_only) == len(DOCS) and all(isinstance(text, str) for text in text_only)
    assert seen == [q.replace("<image>", "").strip() for q, *_ in DOCS]  # the placeholder goes with the image
    assert type(lm.adapter) is type(get_adapter(lm.model, lm.processor))


# ----------------------------------------------------------------- with lmms-eval installed
@pytest.fixture(scope="module")
def lmms_eval():
    if os.environ.get("AIA_LMMS_PYTHON"):  # CI's lmms-eval environment (.ci/run): a broken lmms-eval fails
        import lmms_eval

        return lmms_eval
    return pytest.importorskip("lmms_eval")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms_models")
    return {name: save_model(*build(seed=0, num_layers=1), root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def aia_class(lmms_eval):
    from aia.evaluate.lmms import AIA

    return AIA


def docs():
    return [{"question": q, "image": Image.new("RGB", size, color)} for q, color, size in DOCS]


def instance(request_type, arguments, idx):
    try:
        from lmms_eval.api.instance import Instance
    except ImportError:  # what the plugin reads of a request: its args
        return _Request(request_type, arguments, idx)
    made = Instance(request_type=request_type, arguments=arguments, idx=idx,
                    metadata={"task": TASK, "doc_id": idx, "repeats": 1})
    if made.task_name != TASK:  # lmms-eval < 0.7: metadata is a (task, doc_id, repeats) tuple
        made = Instance(request_type=request_type, arguments=arguments, idx=idx, metadata=(TASK, idx, 1))
    return made


def requests(gen_kwargs=GREEDY, visual=lambda doc: [doc["image"]]):
    """``generate_until`` requests as lmms-eval's simple tasks build them."""
    return [instance("generate_until", (q, dict(gen_kwargs), visual, i, TASK, SPLIT), i)
            for i, (q, _, _) in enumerate(DOCS)]


def load(aia_class, model_dir, task_docs, **config):
    lm = aia_class.create_from_arg_string(f"pretrained={model_dir}", {"device": "cpu", **config})
    lm.task_dict = {TASK: {SPLIT: task_docs}}
    return lm


def test_registration(lmms_eval, aia_class):
    """The entry point's manifest registers ``aia`` as a simple lmms-eval model resolving to AIA."""
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    registry = ModelRegistryV2()
    registry.register_manifest(declared_entry_point().load()())
    assert registry.get_model_class("aia") is aia_class
    assert issubclass(aia_class, lmms) and aia_class.is_simple
    if any(ep.value == declared_entry_point().value for ep in entry_points(group="lmms_eval.models")):
        from lmms_eval.models import get_model  # the installed metadata has the entry point: what the CLI does

        assert get_model("aia") is aia_class


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_generate_until_matches_answer(family, aia_class, model_dirs, tmp_path):
    """Batched greedy answers, in request order, equal to :func:`answer` on the same questions."""
    check_matches_answer(aia_class, family, model_dirs, tmp_path)


def check_matches_answer(aia_class, family, model_dirs, tmp_path):
    task_docs = docs()
    lm = load(aia_class, model_dirs[family], task_docs, batch_size=2)
    assert lm.family == family and lm.batch_size == 2 and str(lm.device) == "cpu"
    got = lm.generate_until(requests())
    assert len(got) == len(DOCS) and all(isinstance(text, str) for text in got)

    rows = []
    for i, doc in enumerate(task_docs):
        doc["image"].save(tmp_path / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "question": DOCS[i][0], "answer": ""})
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    answer(model_dirs[family], "custom", tmp_path / "questions.jsonl", tmp_path / "pred.jsonl", batch_size=2,
           max_new_tokens=GREEDY["max_new_tokens"], progress=False)
    expected = [json.loads(line)["prediction"] for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [text.strip() for text in got] == expected
    assert any(expected), "the tiny model answered nothing: the comparison would be vacuous"


def test_generate_until_options(aia_class, model_dirs):
    """``until`` cuts the answer; ``max_new_tokens`` bounds it; requests of different settings are
    batched apart and answered in order; sampling settings are ignored with a warning."""
    lm = load(aia_class, model_dirs["janus"], docs(), batch_size=3)
    full = lm.generate_until(requests())
    word = next(text for text in full if text.strip()).split()[0]
    cut = lm.generate_until(requests({**GREEDY, "until": [word]}))
    assert cut == [text.split(word)[0] for text in full]
    tokens = lm.tokenizer
    short = lm.generate_until(requests({**GREEDY, "max_new_tokens": 2}))
    assert all(len(tokens(text, add_special_tokens=False)["input_ids"]) <= 3 for text in short)

    mixed = requests()
    mixed[1] = requests({**GREEDY, "until": [word]})[1]
    assert lm.generate_until(mixed) == [full[0], cut[1], full[2]]

    with pytest.warns(UserWarning, match="greedy decoding only"):
        sampled = lm.generate_until(requests({**GREEDY, "temperature": 0.7, "do_sample": True}))
    assert sampled == full


def test_generate_until_visuals(aia_class, model_dirs, tmp_path):
    """Several images: the first is used (with a warning); none: a text-only prompt; an image file works."""
    task_docs = docs()
    lm = load(aia_class, model_dirs["emu3"], task_docs, batch_size=2)
    full = lm.generate_until(requests())
    with pytest.warns(UserWarning, match="first"):
        two = lm.generate_until(requests(visual=lambda doc: [doc["image"], Image.new("RGB", (32, 32), "white")]))
    assert two == full
    task_docs[0]["image"].save(tmp_path / "0.png")
    files = lm.generate_until(requests(visual=lambda doc: [str(tmp_path / "0.png")])[:1])
    assert files == full[:1]
    text_only = lm.generate_until(requests(visual=lambda doc: []))
    assert len(text_only) == len(DOCS) and all(isinstance(text, str) for text in text_only)

    from aia.errors import InputError

    with pytest.raises(InputError, match="videos"):
        lm.generate_until(requests(visual=lambda doc: ["clip.mp4"]))


def test_unsupported_requests_and_arguments(aia_class, model_dirs, tmp_path):
    lm = load(aia_class, model_dirs["chameleon"], docs())
    with pytest.raises(NotImplementedError, match="loglikelihood"):
        lm.loglikelihood([instance("loglikelihood", ("Is it red?", "yes", lambda doc: [], 0, TASK, SPLIT), 0)])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round(requests())

    from aia.errors import InputError

    with pytest.raises(InputError, match="model directory"):
        load(aia_class, tmp_path / "missing", [])
    with pytest.raises(InputError, match="batch_size"):
        load(aia_class, model_dirs["chameleon"], [], batch_size=0)
    with pytest.warns(UserWarning, match="auto"):
        assert load(aia_class, model_dirs["chameleon"], [], batch_size="auto").batch_size == 1


TASK_YAML = """\
task: aia_tiny_vqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
TASK_UTILS = """\
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\\nAnswer the question using a single word or phrase."


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
"""


@pytest.mark.integration
def test_simple_evaluate_local_task(aia_class, model_dirs, tmp_path, monkeypatch):
    """lmms-eval's own evaluation loop (what ``lmms-eval --model aia --tasks ...`` runs) on a local task."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    rows = []
    for i, (question, color, size) in enumerate(DOCS):
        Image.new("RGB", size, color).save(tmp_path / f"{i}.png")
        rows.append({"question": question.replace("<image>\n", "").split("\n")[0], "answer": "yes",
                     "image": str(tmp_path / f"{i}.png")})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks" / "aia_tiny_vqa"
    tasks.mkdir(parents=True)
    (tasks / "aia_tiny_vqa.yaml").write_text(TASK_YAML.format(data=tmp_path / "data.jsonl"))
    (tasks / "utils.py").write_text(TASK_UTILS)

    installed = any(ep.value == declared_entry_point().value for ep in entry_points(group="lmms_eval.models"))
    # by name where the installed metadata has the entry point (as the CLI), else the model object
    model = "aia" if installed else aia_class.create_from_arg_string(f"pretrained={model_dirs['janus']}",
                                                                     {"device": "cpu", "batch_size": 2})
    try:
        out = simple_evaluate(model=model, model_args=f"pretrained={model_dirs['janus']}", tasks=["aia_tiny_vqa"],
                              batch_size=2, device="cpu", log_samples=True,
                              task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False))
    except ModuleNotFoundError as err:
        if "filelock._api" in str(err) and not os.environ.get("AIA_LMMS_PYTHON"):
            pytest.skip("this lmms-eval's simple_evaluate needs filelock < 4 (it patches filelock._api)")
        raise
    assert out["results"]["aia_tiny_vqa"]["exact_match,none"] in (0.0, 1 / 3, 2 / 3, 1.0)
    samples = sorted(out["samples"]["aia_tiny_vqa"], key=lambda s: s["doc_id"])
    got = [s["filtered_resps"][0] for s in samples]
    assert len(got) == len(DOCS) and all(isinstance(text, str) for text in got)

    questions = [{"id": str(i), "image": f"{i}.png", "question": s["arguments"][0], "answer": ""}
                 for i, s in enumerate(samples)]
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    answer(model_dirs["janus"], "custom", tmp_path / "questions.jsonl", tmp_path / "pred.jsonl", batch_size=2,
           max_new_tokens=4, progress=False)
    expected = [json.loads(line)["prediction"] for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [text.strip() for text in got] == expected and any(expected)


def test_every_family_that_answers_is_served_without_lmms_eval(tmp_path):
    """The plugin asks the adapter whether the family answers: the understanding-only family and the
    demo's VQ-LM (registered outside :mod:`aia.adapters`) are served as the unified ones are."""
    import aia.demo  # noqa: F401  (registers the demo's family)
    from aia.demo.digits import DigitsProcessor, DigitsVQ, build_digits_model
    from aia.evaluate import lmms as plugin
    from aia.testing.tiny_understanding import save_understanding_model, tiny_qwen2_vl
    from tests.demo.helpers import CODEBOOK

    stub = type("AIAStub", (plugin._AIAModel, _StubLmms), {})
    digits = DigitsProcessor.build(DigitsVQ(CODEBOOK))
    dirs = {"understanding": save_understanding_model(*tiny_qwen2_vl(seed=0, num_layers=1), tmp_path / "qwen"),
            "vqlm": save_model(build_digits_model(digits, num_layers=1, hidden_size=32, num_heads=2), digits,
                               tmp_path / "digits")}
    for family, directory in dirs.items():
        lm = load(stub, directory, docs(), batch_size=2)
        assert lm.family == family
        got = lm.generate_until(requests())
        assert len(got) == len(DOCS) and all(isinstance(text, str) for text in got), family
