"""Scoring predictions on the paper's understanding benchmarks, and comparing two models.

A predictions file is JSON Lines, one object per question::

    {"id": str, "bench": "pope" | "mme" | "mmmu" | "mmvp", "question": str,
     "answer": str (the ground truth), "prediction": str (the model's output), ...}

with, per benchmark (each module's doc gives the official rules and their source file):

=======  =====================================================================================
pope     ``category`` (adversarial / popular / random)             :mod:`aia.evaluate.pope`
mme      ``category`` (the subtask: existence, OCR, ...), ``image``  :mod:`aia.evaluate.mme`
mmmu     ``question_type`` (multiple-choice / open), ``options`` (list of strings, for
         multiple-choice), ``subject`` (or an id like ``validation_Art_1``) :mod:`aia.evaluate.mmmu`
mmvp     ``pair`` (the two questions of a pair share it), ``options`` (optional)
                                                                      :mod:`aia.evaluate.mmvp`
=======  =====================================================================================

:func:`score` turns rows into every official number of a benchmark, :func:`score_file`
does so for a file, :func:`compare` says, metric by metric, how far an AIA checkpoint is
from its baseline and whether that is beyond noise, and :func:`format_table` prints either.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import numpy as np

import aia.evaluate.mme as mme
import aia.evaluate.mmmu as mmmu
import aia.evaluate.mmvp as mmvp
import aia.evaluate.pope as pope
from aia.errors import DataError
from aia.jsonl import read_jsonl

__all__ = [
    "BENCHMARKS",
    "compare",
    "compare_files",
    "format_table",
    "read_predictions",
    "score",
    "score_file",
]

BENCHMARKS: dict[str, ModuleType] = {"pope": pope, "mme": mme, "mmmu": mmmu, "mmvp": mmvp}
_TITLES = {"pope": "POPE", "mme": "MME", "mmmu": "MMMU", "mmvp": "MMVP"}
_COMMON = ("id", "answer", "prediction")


class _Where:
    """Where rows came from, so that an error names the file and line (or the record index)."""

    def __init__(self, path: str | Path | None = None, lines: list[int] | None = None):
        self.path, self.lines = path, lines

    def error(self, index: int, message: str, field: str | None = None) -> DataError:
        record = f"line {self.lines[index]}" if self.lines is not None else index
        return DataError(message, path=self.path, record=record, field=field)

    def fail(self, index: int, message: str, field: str | None = None):
        raise self.error(index, message, field)


def _bench(bench: str) -> ModuleType:
    if not isinstance(bench, str) or bench.lower() not in BENCHMARKS:
        raise DataError(f"unknown benchmark {bench!r}; known: {', '.join(BENCHMARKS)}", field="bench")
    return BENCHMARKS[bench.lower()]


# ----------------------------------------------------------------- reading
def _read(path: str | Path) -> tuple[list[dict], list[int]]:
    path = Path(path)
    if not path.is_file():
        raise DataError("no such predictions file", path=path)
    rows, lines = [], []
    for line in read_jsonl(path):
        if not isinstance(line.value, dict):
            kind = type(line.value).__name__
            raise DataError(f"a prediction must be a JSON object, got {kind}", path=path, record=f"line {line.number}")
        rows.append(line.value)
        lines.append(line.number)
    if not rows:
        raise DataError("no predictions", path=path)
    return rows, lines


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a predictions JSONL file (blank lines skipped).

    Raises:
        DataError: the file is missing, not UTF-8, empty, or has a line that is not a JSON
            object; the message names the file and the line.
    """
    return _read(path)[0]


def _select(rows: list[dict], lines: list[int], bench: str | None, path) -> tuple[str, list[dict], list[int]]:
    """The benchmark of a file's rows and the rows (with their lines) that belong to it."""
    named = [r.get("bench") for r in rows]
    for row_bench, lineno in zip(named, lines, strict=True):
        if row_bench is not None and (not isinstance(row_bench, str) or row_bench.lower() not in BENCHMARKS):
            raise DataError(f"unknown benchmark {row_bench!r}; known: {', '.join(BENCHMARKS)}", path=path,
                            record=f"line {lineno}", field="bench")
    found = sorted({b.lower() for b in named if b is not None})
    if bench is None:
        if len(found) != 1:
            raise DataError("holds several benchmarks (" + ", ".join(found) + "); say which one to score"
                            if found else "no row names its 'bench'; say which benchmark to score", path=path)
        bench = found[0]
    bench = _bench(bench).NAME
    keep = [i for i, b in enumerate(named) if b is None or b.lower() == bench]
    if not keep:
        raise DataError(f"no {bench} predictions (the file holds {', '.join(found)})", path=path)
    return bench, [rows[i] for i in keep], [lines[i] for i in keep]


# ----------------------------------------------------------------- judging
def _judge(bench: str, rows: list[dict], where: _Where, options: dict) -> list[dict]:
    """Validate ``rows`` and read each prediction the official way; one dict per row."""
    module = _bench(bench)
    if not rows:
        raise DataError(f"no {module.NAME} predictions", path=where.path)
    judged, seen = [], {}
    for i, original in enumerate(rows):
        if not isinstance(original, dict):
            where.fail(i, f"a prediction must be an object, got {type(original).__name__}")
        row = dict(original)
        if row.get("bench") is not None and str(row["bench"]).lower() != module.NAME:
            where.fail(i, f"a {row['bench']!r} row among {module.NAME} predictions", "bench")
        for field in _COMMON + module.FIELDS:
            if field not in row:
                where.fail(i, f"missing field (a {module.NAME} prediction needs "
                              f"{', '.join(repr(f) for f in _COMMON + module.FIELDS)})", field)
        if not isinstance(row["id"], str | int) or isinstance(row["id"], bool) or row["id"] == "":
            where.fail(i, "'id' must be a non-empty string", "id")
        row["id"] = str(row["id"])
        if row["id"] in seen:
            where.fail(i, f"duplicate id {row['id']!r} (first at "
                          f"{'line ' + str(where.lines[seen[row['id']]]) if where.lines else 'record ' + str(seen[row['id']])})",
                       "id")
        seen[row["id"]] = i
        if not isinstance(row["prediction"], str):
            where.fail(i, f"'prediction' must be a string, got {type(row['prediction']).__name__}", "prediction")
        if not isinstance(row["answer"], str | list):
            where.fail(i, f"'answer' must be a string, got {type(row['answer']).__name__}", "answer")
        module.check(row, lambda message, field=None, i=i: where.fail(i, message, field))
        j = module.judge(row, **options)
        j.update(index=i, id=row["id"], row=row)
        judged.append(j)
    module.check_groups(judged, where.fail)
    return judged


def _result(bench: str, judged: list[dict], options: dict) -> dict:
    module = _bench(bench)
    metrics, details, notes = module.aggregate(judged)
    result = {"bench": module.NAME, "n": len(judged), "headline": module.HEADLINE, "metrics": metrics,
              "details": details, "notes": notes}
    if module is mmmu:
        result["options"] = {"mmmu_parser": options.get("mmmu_parser", "mmmu"),
                             "seed": options.get("seed", mmmu.DEFAULT_SEED)}
    return result


def _options(bench: str, mmmu_parser: str, seed: int) -> dict:
    if mmmu_parser not in mmmu.PARSERS:
        raise DataError(f"unknown MMMU parser {mmmu_parser!r}; known: {', '.join(mmmu.PARSERS)}",
                        field="mmmu_parser")
    return {"mmmu_parser": mmmu_parser, "seed": seed} if _bench(bench) is mmmu else {}


def score(bench: str, rows: list[dict], *, mmmu_parser: str = "mmmu", seed: int = mmmu.DEFAULT_SEED) -> dict:
    """Every official number of ``bench`` on ``rows`` (prediction dicts, see the module doc).

    Args:
        bench: ``"pope"``, ``"mme"``, ``"mmmu"`` or ``"mmvp"`` (any case).
        rows: one dict per question; a row whose ``bench`` names another benchmark is an error.
        mmmu_parser: MMMU multiple-choice reading: ``"mmmu"`` (the benchmark's
            ``parse_multi_choice_response``) or ``"aia"`` (the released AIA pipeline's
            ``post_process``); see :mod:`aia.evaluate.mmmu`.
        seed: MMMU's seed for the random letter given to an unparseable multiple-choice answer.

    Returns:
        ``{"bench", "n" (questions), "headline" (the metric papers report), "metrics"
        ({"<group>/<metric>": float}), "details" (counts per group), "notes" (warnings:
        missing categories or subtasks, random fallbacks)}``. Accuracies are fractions in
        [0, 1]; MME scores are ``100*acc + 100*acc+`` per subtask and their sums.

    Raises:
        DataError: a row lacks a field or has a bad value, an id repeats, an MME image or
            MMVP pair does not have exactly two questions; the message names the record index.
    """
    options = _options(bench, mmmu_parser, seed)
    return _result(bench, _judge(bench, rows, _Where(), options), options)


def score_file(path: str | Path, bench: str | None = None, *, mmmu_parser: str = "mmmu",
               seed: int = mmmu.DEFAULT_SEED) -> dict:
    """:func:`score` on a predictions JSONL file.

    Args:
        path: the file.
        bench: the benchmark to score: its rows (and rows without ``bench``) are scored and
            the others ignored; ``None`` takes the one benchmark the rows name.

    Raises:
        DataError: as :func:`score`, and for a malformed line, a missing file, or (with
            ``bench=None``) a file naming several or no benchmarks; the message names the
            file and the line.
    """
    rows, lines = _read(path)
    bench, rows, lines = _select(rows, lines, bench, path)
    options = _options(bench, mmmu_parser, seed)
    result = _result(bench, _judge(bench, rows, _Where(path, lines), options), options)
    result["path"] = str(path)
    return result


# ----------------------------------------------------------------- comparing
def _linear_se(groups_base: list[tuple[float, dict]], groups_aia: list[tuple[float, dict]]) -> float | None:
    """Paired SE of ``sum_g w_g * (mean_g(aia) - mean_g(base))``: ``sqrt(sum_g w_g^2 s_g^2 / n_g)``.

    ``s_g`` is the sample standard deviation (ddof 1) of the per-unit differences in group
    ``g``; ``None`` when a group has fewer than 2 units, or when there is no group (a total of
    subtasks none of which is present: no data, not a difference known to be 0).
    """
    if not groups_base:
        return None
    var = 0.0
    for (w, base), (_, aia) in zip(groups_base, groups_aia, strict=True):
        diffs = np.array([aia[u] - base[u] for u in base], dtype=float)
        if len(diffs) < 2:
            return None
        var += w * w * float(diffs.var(ddof=1)) / len(diffs)
    return math.sqrt(var)


def _check_paired(module: ModuleType, base: list[dict], aia: list[dict], where_aia: _Where) -> None:
    """The two sets must hold the same questions, with the same ground truth and grouping."""
    base_by = {j["id"]: j for j in base}
    aia_ids = {j["id"] for j in aia}
    if missing := [i for i in base_by if i not in aia_ids]:
        raise DataError(f"{len(missing)} baseline question(s) have no AIA prediction (first: {missing[0]!r}); "
                        "compare needs the same questions in both", path=where_aia.path)
    for j in aia:
        if j["id"] not in base_by:
            where_aia.fail(j["index"], f"question {j['id']!r} has no baseline prediction; "
                                       "compare needs the same questions in both", "id")
        other = base_by[j["id"]]["row"]
        for field in module.PAIRED_FIELDS:
            if j["row"].get(field) != other.get(field):
                where_aia.fail(j["index"], f"question {j['id']!r}: {j['row'].get(field)!r} here, "
                                           f"{other.get(field)!r} in the baseline", field)


def _compare(bench: str, base: list[dict], aia: list[dict], where_aia: _Where, options: dict, n_boot: int,
             seed: int) -> dict:
    module = _bench(bench)
    _check_paired(module, base, aia, where_aia)
    r_base, r_aia = _result(bench, base, options), _result(bench, aia, options)
    lin_base, lin_aia = module.linear(base), module.linear(aia)
    boot = module.bootstrap(base, aia, n_boot, np.random.default_rng(seed))
    metrics = {}
    for name, b in r_base["metrics"].items():
        a = r_aia["metrics"][name]
        if name in lin_base:
            se, method = _linear_se(lin_base[name], lin_aia[name]), "paired"
        else:
            se, method = boot[name], "bootstrap"
        diff = a - b
        metrics[name] = {"base": b, "aia": a, "diff": diff, "se": se, "method": method,
                         "verdict": "beyond noise" if se is not None and abs(diff) > 2 * se else "within noise"}
    out = {"bench": module.NAME, "n": len(base), "headline": module.HEADLINE, "metrics": metrics,
           "notes": sorted(set(r_base["notes"]) | set(r_aia["notes"]))}
    if boot:
        out["bootstrap"] = {"n_boot": n_boot, "seed": seed}
    if "options" in r_base:
        out["options"] = r_base["options"]
    return out


def compare(base_rows: list[dict], aia_rows: list[dict], bench: str, *, n_boot: int = 1000, seed: int = 0,
            mmmu_parser: str = "mmmu", mmmu_seed: int = mmmu.DEFAULT_SEED) -> dict:
    """Per metric, AIA minus baseline with a paired standard error and a verdict.

    The two sets must hold the same questions (paired by ``id``, with the same ground truth
    and grouping fields). The SE depends on the metric:

    * a mean of per-unit values (accuracy, yes-ratio, MME acc/acc+/score, MMVP pair
      accuracy, MMMU accuracy) gets the analytic paired SE ``sd(d)/sqrt(n)`` of the
      per-unit differences ``d`` (ddof 1); the unit is the question, except MME (the image:
      its two questions are scored together) and MMVP (the pair); a weighted sum of such
      means over groups (POPE's mean over categories, MME's totals) gets
      ``sqrt(sum_g w_g^2 sd_g^2/n_g)``, the groups taken as independent;
    * POPE precision, recall and F1 (and their means over categories), not means of
      per-question values, get a paired bootstrap: ``n_boot`` resamples of the questions
      within each category (the same draw for both models), numpy seed ``seed``; the SE is
      the standard deviation of the bootstrap differences.

    The verdict is ``"beyond noise"`` when ``|diff| > 2 SE`` and ``"within noise"``
    otherwise (also when the SE is undefined, with fewer than 2 units).

    Returns:
        ``{"bench", "n" (paired questions), "headline", "metrics": {name: {"base", "aia",
        "diff", "se", "method" ("paired" or "bootstrap"), "verdict"}}, "notes"}``, plus
        ``"bootstrap": {"n_boot", "seed"}`` where it was used.

    Raises:
        DataError: as :func:`score`, or the sets do not hold the same questions.
    """
    options = _options(bench, mmmu_parser, mmmu_seed)
    base = _judge(bench, base_rows, _Where("baseline predictions"), options)
    where_aia = _Where("AIA predictions")
    aia = _judge(bench, aia_rows, where_aia, options)
    return _compare(bench, base, aia, where_aia, options, n_boot, seed)


def compare_files(base_path: str | Path, aia_path: str | Path, bench: str | None = None, *, n_boot: int = 1000,
                  seed: int = 0, mmmu_parser: str = "mmmu", mmmu_seed: int = mmmu.DEFAULT_SEED) -> dict:
    """:func:`compare` on two predictions files (errors name the file and line)."""
    base_rows, base_lines = _read(base_path)
    aia_rows, aia_lines = _read(aia_path)
    bench, base_rows, base_lines = _select(base_rows, base_lines, bench, base_path)
    bench, aia_rows, aia_lines = _select(aia_rows, aia_lines, bench, aia_path)
    options = _options(bench, mmmu_parser, mmmu_seed)
    base = _judge(bench, base_rows, _Where(base_path, base_lines), options)
    where_aia = _Where(aia_path, aia_lines)
    aia = _judge(bench, aia_rows, where_aia, options)
    out = _compare(bench, base, aia, where_aia, options, n_boot, seed)
    out["paths"] = {"base": str(base_path), "aia": str(aia_path)}
    return out


# ----------------------------------------------------------------- printing
def _number(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if name.endswith("/score") else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]], numeric: range) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:  # numbers right-aligned, words left-aligned
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    lines = [line(r).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _format_one(result: dict) -> str:
    title = _TITLES.get(result["bench"], result["bench"])
    metrics, headline = result["metrics"], result["headline"]
    if metrics and isinstance(next(iter(metrics.values())), dict):  # a compare() result
        lines = [f"{title}: AIA minus baseline on {result['n']} paired questions; headline {headline}"]
        rows = [[name, _number(name, m["base"]), _number(name, m["aia"]),
                 ("+" if m["diff"] >= 0 else "") + _number(name, m["diff"]), _number(name, m["se"]), m["method"],
                 m["verdict"]] for name, m in metrics.items()]
        lines += _table(["metric", "baseline", "AIA", "diff", "SE", "SE by", "verdict"], rows, range(1, 5))
        lines.append("verdict: beyond noise where |diff| > 2 SE; SE paired by question id"
                     + (" (by image for MME, by pair for MMVP)" if result["bench"] in ("mme", "mmvp") else ""))
        if "bootstrap" in result:
            lines.append(f"bootstrap: {result['bootstrap']['n_boot']} paired resamples within each category, "
                         f"seed {result['bootstrap']['seed']}")
    else:
        lines = [f"{title}: {result['n']} questions; headline {headline} = {_number(headline, metrics[headline])}"]
        lines += _table(["metric", "value"], [[name, _number(name, v)] for name, v in metrics.items()], range(1, 2))
    if "options" in result:
        lines.append(f"MMMU multiple-choice parser: {result['options']['mmmu_parser']} "
                     f"(random-fallback seed {result['options']['seed']})")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def format_table(results: dict | list[dict]) -> str:
    """A plain-text table of a :func:`score` or :func:`compare` result, or of a list of them.

    Accuracies print with 4 decimals (fractions), MME scores with 2; a compare table has one
    row per metric: baseline, AIA, difference, SE, how the SE was computed, verdict.
    """
    if isinstance(results, dict):
        results = [results]
    return "\n\n".join(_format_one(r) for r in results)
