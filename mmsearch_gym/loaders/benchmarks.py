"""The papers' benchmarks, read as their publishers ship them.

MMSearch-R1 reports FVQA, InfoSeek, MMSearch, SimpleVQA and LiveVQA; DeepMMSearch-R1 adds
Enc-VQA, DynVQA, OK-VQA and A-OKVQA. Each :class:`Benchmark` maps one published row to a Task:
question, gold answers with every alias the publisher gives (deduplicated, most frequent
first for the 10-annotator VQA sets), the image (bytes, path, id under ``image_dir``, or a
URL whose file was downloaded there), ``meta["taxonomy"]`` (the benchmark's own topic or
question-type field, which ``make-sft`` samples uniformly over) and the rest in ``meta``.

Where each mapping comes from (``Benchmark.schema``) and whether the published schema could be
checked while writing it (``Benchmark.verified``) is recorded per benchmark; the README's
benchmark table repeats it. Unverified mappings accept the usual spellings of each field and
say which fields they looked for when a row has none of them.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.loaders.jsonl import _category, _objects
from mmsearch_gym.loaders.rows import ImageResolver, Rows, read_hf, read_rows
from mmsearch_gym.tasks import Task, TaskSet

__all__ = ["BENCHMARKS", "Benchmark", "answer_aliases", "load_benchmark"]


@dataclass
class RowContext:
    """What a row mapper needs besides the row."""

    where: str
    index: int
    stem: str
    split: str
    images: ImageResolver
    explicit_split: bool = False
    """The user named the split: a row's own split column does not override it."""


class _NoImage(Exception):
    """The row has no image (MMSearch's text-only queries): skipped and counted."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its row mapper and where its schema comes from."""

    name: str
    paper: str
    schema: str
    verified: bool
    to_task: Callable[[Mapping[str, Any], RowContext], Task]
    default_split: str = "test"
    parts: Callable[[Mapping[str, Any]], list[tuple[str, Mapping[str, Any]]]] | None = None
    """Splits one published item into several task rows (LiveVQA: two question levels per image)."""


# --- shared field helpers --------------------------------------------------------------


def _first(row: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = row.get(name)
        if value not in (None, "", [], {}):
            return value
    return None


def _need(row: Mapping[str, Any], where: str, *names: str) -> Any:
    value = _first(row, *names)
    if value is None:
        raise DataError(f"{where}: none of the fields {list(names)} is set (found {sorted(row)})")
    return value


def _maybe_list(value: Any) -> Any:
    """A list shipped as JSON or Python-literal text (``"['a', 'b']"``) becomes a list."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        for parse in (json.loads, ast.literal_eval):
            try:
                return parse(value)
            except (ValueError, SyntaxError):
                continue
    return value


def answer_aliases(*values: Any, by_frequency: bool = False) -> tuple[str, ...]:
    """Flatten answer fields (strings, lists, ``{"answer"|"raw_answer"|"wikidata"}`` dicts,
    JSON-list strings) into deduplicated aliases; ``by_frequency`` orders the 10-annotator
    answers of VQA-style sets by how many annotators gave them (ties keep first-seen order)."""
    flat: list[str] = []

    def add(value: Any) -> None:
        value = _maybe_list(value)
        if isinstance(value, Mapping):
            for key in ("answer", "wikidata", "raw_answer", "text"):
                if value.get(key) not in (None, ""):
                    add(value[key])
            rng = value.get("range")
            if isinstance(rng, Sequence) and len(rng) == 2 and value.get("wikidata") is None:
                add(rng[0])
        elif isinstance(value, (list, tuple)):
            for item in value:
                add(item)
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, float) and value.is_integer():
            flat.append(str(int(value)))
        else:
            text = " ".join(str(value).split())
            if text:
                flat.append(text)

    for value in values:
        add(value)
    order = list(dict.fromkeys(flat))
    if by_frequency:
        counts = Counter(flat)
        order.sort(key=lambda a: -counts[a])
    return tuple(order)


def _answers(where: str, *values: Any, by_frequency: bool = False) -> tuple[str, ...]:
    answers = answer_aliases(*values, by_frequency=by_frequency)
    if not answers:
        raise DataError(f"{where}: the row has no gold answer")
    return answers


def _meta(row: Mapping[str, Any], skip: Sequence[str], taxonomy: Any = None) -> dict[str, Any]:
    meta = {k: v for k, v in row.items() if k not in skip and _jsonable(v)}
    if taxonomy not in (None, ""):
        meta["taxonomy"] = str(taxonomy)
    return meta


def _jsonable(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)) or hasattr(value, "mode"):
        return False
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _task(row: Mapping[str, Any], ctx: RowContext, *, task_id: Any, question: Any, answers: tuple[str, ...],
          image: Any, image_url: Any = None, category: Any = None, meta: Mapping[str, Any] | None = None) -> Task:
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{ctx.where}: the question must be a non-empty string")
    if image is None:
        raise _NoImage(ctx.where)
    url = image_url if isinstance(image_url, str) and image_url.strip() else None
    image_bytes, image_path, url = ctx.images.resolve(image, ctx.where, url=url)
    tid = f"{ctx.stem}-{ctx.index:06d}" if task_id in (None, "") else str(task_id)
    return Task(id=tid, question=" ".join(question.split()), answers=answers,
                category=_category(category or "unknown"), split=ctx.split, image_bytes=image_bytes,
                image_path=image_path, image_url=url, meta=dict(meta or {}))


# --- the benchmarks -------------------------------------------------------------------


def _infoseek(row: Mapping[str, Any], ctx: RowContext) -> Task:
    image = _first(row, "image", "image_path") or _need(row, ctx.where, "image_id")
    answers = _answers(ctx.where, row.get("answer_eng"), row.get("answer"), row.get("answers"))
    return _task(row, ctx, task_id=row.get("data_id"), question=row.get("question"), answers=answers, image=image,
                 meta=_meta(row, ("image", "question", "answer", "answer_eng", "answers"),
                            taxonomy=_first(row, "question_type")))


def _mmsearch(row: Mapping[str, Any], ctx: RowContext) -> Task:
    answers = _answers(ctx.where, row.get("gt_answer"), row.get("alternative_gt_answers"))
    return _task(row, ctx, task_id=row.get("sample_id"), question=row.get("query"), answers=answers,
                 image=_first(row, "query_image"),
                 meta=_meta(row, ("query", "query_image", "image_search_result", "gt_answer",
                                  "alternative_gt_answers"), taxonomy=_first(row, "subfield", "area")))


def _simplevqa(row: Mapping[str, Any], ctx: RowContext) -> Task:
    answers = _answers(ctx.where, row.get("answer"))
    return _task(row, ctx, task_id=row.get("data_id"), question=row.get("question"), answers=answers,
                 image=_need(row, ctx.where, "image", "image_path"),
                 meta=_meta(row, ("image", "question", "answer"),
                            taxonomy=_first(row, "original_category", "vqa_category")))


_GENERIC_IMAGE = ("image", "images", "img", "image_path", "img_path", "image_file", "file_name", "image_id")
_GENERIC_ANSWER = ("answers", "answer", "gt_answer", "ground_truth", "label")


def _generic(row: Mapping[str, Any], ctx: RowContext) -> Task:
    """Common spellings (plain ``hf:`` / JSONL sources; LiveVQA and DynVQA rows without their published fields)."""
    answers = _answers(ctx.where, _need(row, ctx.where, *_GENERIC_ANSWER),
                       row.get("alternative_answers"), row.get("answer_aliases"))
    url = _first(row, "image_url", "img_url", "url")
    image = _first(row, *_GENERIC_IMAGE) or url
    if image is None:
        raise DataError(f"{ctx.where}: none of the image fields {list(_GENERIC_IMAGE) + ['image_url']} is set "
                        f"(found {sorted(row)})")
    objects = _objects(row["objects"], ctx.where) if isinstance(row.get("objects"), list) else ()
    task = _task(row, ctx, task_id=_first(row, "id", "question_id", "sample_id", "data_id", "qid"),
                 question=_need(row, ctx.where, "question", "query", "prompt_question"), answers=answers,
                 image=image, image_url=url, category=row.get("category") if row.get("category") else None,
                 meta=_meta(row, (*_GENERIC_IMAGE, *_GENERIC_ANSWER, "question", "query", "objects"),
                            taxonomy=_first(row, "taxonomy", "topic", "category", "question_type", "type")))
    if objects:
        task = replace(task, objects=objects)
    return task


def _livevqa_parts(row: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """A LiveVQA ``benchmark.json`` item asks two questions about one image (``level1_qa``: what
    the image shows; ``level2_qa``: a multi-hop question about it): one task row per level."""
    levels = [key for key in ("level1_qa", "level2_qa") if isinstance(row.get(key), Mapping)]
    if not levels:
        return [("", row)]
    outer = {k: v for k, v in row.items() if k not in ("level1_qa", "level2_qa")}
    parts: list[tuple[str, Mapping[str, Any]]] = []
    for key in levels:
        level = key.split("_")[0]
        item_id = row.get("id")
        sub = {**outer, **row[key], "level": level, "item_id": item_id,
               "id": f"{item_id}-{level}" if item_id not in (None, "") else None}
        parts.append((f" {level}", sub))
    return parts


def _option_text(row: Mapping[str, Any]) -> str | None:
    """The text of the correct multiple-choice option (``Ground_Truth`` is its letter)."""
    letter = str(row.get("Ground_Truth") or "").strip()
    options = _maybe_list(row.get("options"))
    if not letter or not isinstance(options, list):
        return None
    for option in options:
        text = str(option).strip()
        if text.startswith(f"{letter}.") or text.startswith(f"{letter})"):
            return text[len(letter) + 1:].strip() or None
    return None


def _livevqa_image(value: Any, ctx: RowContext) -> Any:
    """``img_path`` is relative to the benchmark's image folder next to its ``benchmark.json``
    (``News/News_imgs``, ``Paper/Paper_images``, ``Video/Video_images``); found there when no
    ``image_dir`` is given."""
    folder = ctx.images.folder
    if isinstance(value, str) and value and ctx.images.image_dir is None and folder is not None:
        for sub in (f"{folder.name}_imgs", f"{folder.name}_images"):
            if (folder / sub / value).is_file():
                return str(folder / sub / value)
    return value


def _livevqa(row: Mapping[str, Any], ctx: RowContext) -> Task:
    if not any(key in row for key in ("Ground_Truth_List", "Ground_Truth")):
        return _generic(row, ctx)  # a flat export with common spellings
    answers = _answers(ctx.where, row.get("Ground_Truth_List"), _option_text(row))
    url = _first(row, "img_url")
    image = _livevqa_image(_first(row, "img_path"), ctx) or url
    if image is None:
        raise DataError(f"{ctx.where}: neither img_path nor img_url is set (found {sorted(row)})")
    task_id = row.get("id") or f"{ctx.stem}-{ctx.index:06d}-{row.get('level', 'q')}"
    return _task(row, ctx, task_id=task_id, question=row.get("question"), answers=answers, image=image,
                 image_url=url, meta=_meta(row, ("id", "question", "Ground_Truth_List", "img_path", "img_url"),
                                           taxonomy=row.get("question_type")))


def _dynvqa(row: Mapping[str, Any], ctx: RowContext) -> Task:
    if "question_id" not in row and "gloden_query" not in row:
        return _generic(row, ctx)  # rows with common spellings
    answers = _answers(ctx.where, _need(row, ctx.where, "answer", "answers"))
    url = _first(row, "image_url")
    image = _first(row, "image", "image_path") or url
    if image is None:
        raise DataError(f"{ctx.where}: image_url is not set (found {sorted(row)})")
    qid = str(row.get("question_id") or "")
    match = re.match(r"(en|zh)\d", qid) or re.search(r"(?:^|[_-])(en|zh)$", ctx.stem)
    meta = _meta(row, ("question_id", "question", "answer", "image", "image_path", "image_url"))
    if match:
        meta["language"] = match.group(1)
    return _task(row, ctx, task_id=qid or None, question=row.get("question"), answers=answers, image=image,
                 image_url=url, meta=meta)


def _encvqa(row: Mapping[str, Any], ctx: RowContext) -> Task:
    raw = str(_need(row, ctx.where, "answer"))
    aliases = []
    for part in raw.split("|"):
        pieces = [p.strip() for p in part.split("&&") if p.strip()]
        if pieces:
            aliases.append(", ".join(pieces) if len(pieces) > 1 else pieces[0])
    ids = _maybe_list(_need(row, ctx.where, "dataset_image_ids", "image", "image_path"))
    if isinstance(ids, str):
        ids = [i.strip() for i in ids.split("|") if i.strip()]
    split = row.get("encyclopedic_vqa_split")
    task = _task(row, ctx, task_id=row.get("id"), question=row.get("question"),
                 answers=_answers(ctx.where, aliases), image=ids,
                 meta=_meta(row, ("question", "answer"), taxonomy=_first(row, "question_type")))
    if split and not ctx.explicit_split:
        task = replace(task, split=str(split))
    return task


def _okvqa(row: Mapping[str, Any], ctx: RowContext) -> Task:
    image = _first(row, "image")
    if image is None and row.get("image_id") not in (None, ""):
        image = f"COCO_val2014_{int(row['image_id']):012d}"  # the official OK-VQA val images (COCO 2014)
    answers = _answers(ctx.where, _need(row, ctx.where, "answers"), by_frequency=True)
    return _task(row, ctx, task_id=row.get("question_id"), question=row.get("question"), answers=answers,
                 image=image, meta=_meta(row, ("image", "question", "answers"), taxonomy=row.get("question_type")))


def _aokvqa(row: Mapping[str, Any], ctx: RowContext) -> Task:
    image = _first(row, "image")
    if image is None and row.get("image_id") not in (None, ""):
        image = f"{int(row['image_id']):012d}"  # A-OKVQA uses COCO 2017 file names
    direct = answer_aliases(row.get("direct_answers"), by_frequency=True)
    choices = _maybe_list(row.get("choices"))
    chosen = None
    idx = row.get("correct_choice_idx")
    if isinstance(choices, list) and isinstance(idx, int) and 0 <= idx < len(choices):
        chosen = choices[idx]
    answers = _answers(ctx.where, list(direct), chosen)
    return _task(row, ctx, task_id=row.get("question_id"), question=row.get("question"), answers=answers,
                 image=image, meta=_meta(row, ("image", "question", "direct_answers")))


def _fvqa(row: Mapping[str, Any], ctx: RowContext) -> Task:
    from mmsearch_gym.loaders.fvqa import _fvqa_task

    return _fvqa_task(row, ctx.where, ctx.split or "test", default_id=f"{ctx.stem}-{ctx.index:06d}")


_MMSR1 = "MMSearch-R1"
_DEEP = "DeepMMSearch-R1"
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("fvqa", _MMSR1, "MMSearch-R1's FVQA parquet (prompt, images, reward_model, data_id, category)",
              True, _fvqa),
    Benchmark("infoseek", _MMSR1, "InfoSeek JSONL (infoseek_{train,val}.jsonl, open-vision-language/infoseek): "
              "data_id, image_id (an OVEN image id; files under image_dir), question, answer, answer_eng "
              "(aliases; numeric answers as {wikidata, range}); question_type from infoseek_val_qtype.jsonl",
              True, _infoseek, "val"),
    Benchmark("mmsearch", _MMSR1, "MMSearch on the hub (CaraJ/MMSearch, config end2end): sample_id, query, "
              "query_image (null for text-only queries, which are skipped), gt_answer, alternative_gt_answers, "
              "area, subfield", False, _mmsearch, "end2end"),
    Benchmark("simplevqa", _MMSR1, "SimpleVQA on the hub (m-a-p/SimpleVQA test.parquet): data_id, image, "
              "question, answer, image_description, language, original_category, source, atomic_question, "
              "atomic_fact, vqa_category", True, _simplevqa),
    Benchmark("livevqa", _MMSR1, "LiveVQA benchmark.json as in github.com/fumingyang2004/LIVEVQA "
              "liveVQA_benchmarks/{News,Paper,Video}/benchmark.json: a list of items {id, img_path, level1_qa, "
              "level2_qa, source, time}, each level {question, question_type, options, Ground_Truth (the option "
              "letter), Ground_Truth_List (aliases), img_path, img_url}; one task per level, id ID-level1 / "
              "ID-level2; images under <Bench>_imgs / <Bench>_images next to the file or image_dir. The hub "
              "copy (ONE-Lab/LiveVQA-new Dataset_viewer_flat.parquet) has unchecked columns: flat rows "
              "without Ground_Truth* fall back to common spellings", True, _livevqa, parts=_livevqa_parts),
    Benchmark("encvqa", _DEEP, "Encyclopedic-VQA CSV (google-research/encyclopedic_vqa {train,val,test}.csv): "
              "question, answer ('|' between annotators, '&&' inside multi-answers), dataset_image_ids "
              "(iNaturalist 2021 / Landmarks v2 ids; files under image_dir), question_type, "
              "encyclopedic_vqa_split, wikipedia_url", True, _encvqa),
    Benchmark("dynvqa", _DEEP, "Dyn-VQA JSONL as in github.com/Alibaba-NLP/OmniSearch dataset/DynVQA_en.jsonl "
              "and dataset/DynVQA_zh.jsonl: image_url (a URL only; files under image_dir by name), question, "
              "question_id (en1.. / zh1.., gives meta['language']), answer (list of aliases in both languages, "
              "numbers as ints), gloden_query (sic: the question with the entity named; kept in meta); rows "
              "without question_id fall back to common spellings", True, _dynvqa),
    Benchmark("okvqa", _DEEP, "OK-VQA on the hub (lmms-lab/OK-VQA: question_id, image, question, answers, "
              "question_type, answer_type; or the official annotations' answers as {answer, raw_answer, "
              "answer_confidence} dicts with image_id for COCO val2014 files)", True, _okvqa, "val2014"),
    Benchmark("aokvqa", _DEEP, "A-OKVQA (allenai JSON / HuggingFaceM4/A-OKVQA): question_id, image or image_id "
              "(COCO 2017), question, choices, correct_choice_idx, direct_answers (10), rationales",
              True, _aokvqa, "validation"),
    Benchmark("tasks", "-", "plain rows with common field names (id, image, question, answers, category)",
              True, _generic),
)}
_ALIASES = {"enc-vqa": "encvqa", "encyclopedic-vqa": "encvqa", "dyn-vqa": "dynvqa", "ok-vqa": "okvqa",
            "a-okvqa": "aokvqa", "simple-vqa": "simplevqa", "live-vqa": "livevqa"}


def get_benchmark(name: str) -> Benchmark:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[key]


def _units(bench: Benchmark, rows: Sequence[Mapping[str, Any]]
           ) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
    for index, row in enumerate(rows):
        for label, part in bench.parts(row) if bench.parts else (("", row),):
            yield index, label, part


def load_benchmark(name: str, location: str | Path | Rows, *, split: str | None = None,
                   image_dir: str | Path | None = None, limit: int | None = None) -> TaskSet:
    """Load a benchmark from a local file or folder, or from ``hf:NAME[:CONFIG][:SPLIT]``.

    ``split`` names the Task split (default: the hf split, the file's own split column, or the
    benchmark's usual evaluation split); ``limit`` keeps the first N tasks.
    """
    bench = get_benchmark(name)
    if isinstance(location, Rows):
        rows = location
    elif isinstance(location, str) and location.startswith("hf:"):
        rows = read_hf(location[3:])
    else:
        rows = read_rows(location)
    stem = Path(rows.where).stem.replace(":", "-") if not rows.where.startswith("hf:") else bench.name
    resolver = ImageResolver(folder=rows.folder, image_dir=Path(image_dir) if image_dir else None)
    task_split = split or rows.split or bench.default_split
    tasks: list[Task] = []
    seen: set[str] = set()
    skipped = 0
    for index, label, row in _units(bench, rows.rows):
        if limit is not None and len(tasks) >= limit:
            break
        ctx = RowContext(where=f"{rows.where} row {index}{label}", index=index, stem=stem, split=task_split,
                         images=resolver, explicit_split=split is not None)
        try:
            task = bench.to_task(row, ctx)
        except _NoImage:
            skipped += 1
            continue
        if task.id in seen:
            raise DataError(f"{ctx.where}: the task id {task.id!r} appears twice")
        seen.add(task.id)
        tasks.append(task)
    if skipped:
        warnings.warn(f"{rows.where}: skipped {skipped} row(s) without an image (text-only questions)",
                      stacklevel=2)
    if not tasks:
        raise DataError(f"{rows.where} holds no {bench.name} task with an image")
    where = rows.where if rows.where.startswith("hf:") else Path(rows.where).stem
    return TaskSet(tasks, name=f"{bench.name}:{where}")
