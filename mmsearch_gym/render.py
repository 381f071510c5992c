"""A self-contained HTML report of recorded episodes (``mmsearch-gym render``).

One file, no external resources: inline CSS, images as ``data:`` URLs, and a Content Security
Policy that forbids scripts, so a report can be mailed or attached to a paper review. Every
piece of model or web text is HTML-escaped; links are made only for ``http(s)`` URLs.

Layout: the metrics table (one row per policy, then per category), an index of episodes, then
one section per episode: the task image with every crop box drawn over it (SVG), each turn's
reasoning, query or crop, the results (title, snippet, thumbnail, score), the raw text and
observation, and the reward breakdown.

Where pixels come from:

* recorded with ``--embed-images``: the task-image thumbnail and result thumbnails stored in
  the trajectories (always correct, the file is self-sufficient);
* otherwise (``resolve_images=True``, the default): the task image is rebuilt from the env's
  task source (``world:test`` renders deterministically) and result thumbnails are read back
  from the run's search cache directory, read-only; each is used only if its content hash
  matches the recorded one. Missing pixels are shown as a labelled placeholder.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch_gym.trajectories import THUMBNAIL_SIDE, Trajectory, Turn, encode_thumbnail, iter_trajectories

__all__ = ["ImageResolver", "render_report", "write_report"]

DEFAULT_MAX_EPISODES = 100
"""Episodes per policy shown in full by default (the tables always cover every episode)."""

_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d9dee5;--bg:#f5f7fa;--card:#fff;--ok:#1a7f37;--bad:#c62828;
--accent:#2457c5;--crop:#e53935}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--fg);background:var(--bg)}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 10px}h3{font-size:16px;margin:0}
.sub{color:var(--muted);margin:0 0 16px}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);width:100%}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#eef1f6;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.overall td{font-weight:600;background:#fafbfd}
.episodes td{font-size:13px}.episodes td.q{max-width:420px}.episodes td.id{white-space:nowrap}
.ok{color:var(--ok);font-weight:700}.bad{color:var(--bad);font-weight:700}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
section.episode{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 18px;
margin:18px 0}
.ep-head{display:flex;justify-content:space-between;gap:12px;align-items:baseline;flex-wrap:wrap}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;background:#e8edf6;color:#33415c;
font-size:12px;margin-right:4px}
.task{display:grid;grid-template-columns:minmax(240px,420px) 1fr;gap:18px;margin-top:12px}
.scene{width:100%;height:auto;border:1px solid var(--line);border-radius:4px;background:#222}
.scene rect.halo{fill:none;stroke:#000;stroke-width:6;vector-effect:non-scaling-stroke;opacity:.75}
.scene rect.crop{fill:rgba(255,235,59,.10);stroke:#ffeb3b;stroke-width:3;vector-effect:non-scaling-stroke}
.scene rect.tag{fill:#000;opacity:.75}.scene text{fill:#ffeb3b;font-weight:700;font-family:system-ui,sans-serif}
.placeholder{display:flex;align-items:center;justify-content:center;min-height:160px;border:1px dashed #aab;
border-radius:4px;color:var(--muted);padding:12px;text-align:center;background:#fafafa}
.facts dt{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em}
.facts dd{margin:0 0 8px}
ol.turns{list-style:none;padding:0;margin:14px 0 0}
li.turn{border-left:4px solid #c5cfdf;padding:8px 12px;margin:10px 0;background:#fbfcfe}
li.turn.answer{border-left-color:var(--ok)}li.turn.invalid{border-left-color:var(--bad)}
li.turn.image_search{border-left-color:#8e44ad}li.turn.text_search{border-left-color:var(--accent)}
.turn-head{font-weight:600}.reason{color:#3c4656;font-style:italic;margin:4px 0}
.query{margin:4px 0}.query q{background:#eef3ff;padding:1px 4px;border-radius:3px}
ol.hits{margin:6px 0;padding-left:22px}ol.hits li{margin:6px 0}
.hit{display:flex;gap:10px;align-items:flex-start}
.hit img{width:64px;height:48px;object-fit:cover;border:1px solid var(--line);border-radius:3px;flex:none}
.hit .title{font-weight:600}.hit .url{color:var(--muted);font-size:12px;word-break:break-all}
.hit .snippet{margin:2px 0 0;color:#333;font-size:13px}.score{color:var(--muted);font-size:12px}
details{margin:4px 0}summary{cursor:pointer;color:var(--muted);font-size:12px}
pre{white-space:pre-wrap;word-break:break-word;background:#f1f3f7;padding:8px;border-radius:4px;font-size:12px;
margin:4px 0;max-height:320px;overflow:auto}
.error{color:var(--bad)}
table.breakdown{width:auto;margin-top:12px}
h3.behaviour-title{margin:14px 0 6px}
footer{color:var(--muted);font-size:12px;margin:30px 0 10px}
"""

_OPEN_INDEX = 200
"""Longer episode indexes start collapsed."""
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def _e(value: Any) -> str:
    """HTML-escape any value (text and attribute safe)."""
    return html.escape(str(value), quote=True)


def _data_url(data: bytes | None) -> str | None:
    """A data URL for real image bytes (sniffed by magic number); None for anything else."""
    if not data:
        return None
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return f"data:image/webp;base64,{base64.b64encode(data).decode('ascii')}"
    return None


def _safe_href(url: str) -> str | None:
    lowered = url.strip().lower()
    return url.strip() if lowered.startswith(("http://", "https://")) else None


# --------------------------------------------------------------------------------------------
# Finding pixels that were not embedded
# --------------------------------------------------------------------------------------------


@dataclass
class ImageResolver:
    """Finds task images and result thumbnails for trajectories recorded without embedded images.

    Task images are rebuilt from the env's task source and thumbnails read from the run's search
    cache (read-only: no search is run, no counter touched); both are checked against the
    recorded content hashes.
    """

    enabled: bool = True
    _tasks: dict[str, Any] = field(default_factory=dict)
    _caches: dict[str, Any] = field(default_factory=dict)

    def task_image(self, traj: Trajectory) -> tuple[bytes, tuple[int, int]] | None:
        """Encoded thumbnail bytes and size of the task image, or None."""
        if traj.image.thumbnail is not None and traj.image.thumbnail_size is not None:
            return traj.image.thumbnail, traj.image.thumbnail_size
        if not self.enabled:
            return None
        tasks = self._task_set(traj)
        if tasks is None or traj.task_id not in tasks:
            return None
        from mmsearch_gym.tasks import image_digest

        try:
            image = tasks.by_id(traj.task_id).load_image()
        except Exception:  # a missing file or a broken renderer only costs the picture
            return None
        if image_digest(image) != traj.image.digest:
            return None
        return encode_thumbnail(image, THUMBNAIL_SIDE)

    def _task_set(self, traj: Trajectory) -> Any:
        source = (traj.env.get("kwargs") or {}).get("tasks")
        env_id = traj.env.get("id")
        if source is None and env_id is not None:
            try:
                import gymnasium as gym

                import mmsearch_gym  # noqa: F401

                source = gym.spec(env_id).kwargs.get("tasks")
            except Exception:
                return None
        if source is None:
            return None
        key = repr(source)
        if key not in self._tasks:
            from mmsearch_gym.registration import resolve_tasks

            try:
                self._tasks[key] = resolve_tasks(source)
            except Exception:
                self._tasks[key] = None
        return self._tasks[key]

    def thumbnails(self, traj: Trajectory, turn: Turn) -> list[bytes | None]:
        """One thumbnail (bytes or None) per hit of ``turn``."""
        found: list[bytes | None] = [h.thumbnail for h in turn.hits]
        missing = [i for i, h in enumerate(turn.hits) if h.thumbnail is None and h.thumbnail_digest is not None]
        if not missing or not self.enabled or turn.action.get("kind") not in ("image_search", "text_search"):
            return found
        entry_hits = self._cached_hits(traj, turn)
        by_digest = {hashlib.sha256(bytes(h.thumbnail)).hexdigest(): bytes(h.thumbnail)
                     for h in entry_hits if h.thumbnail is not None}
        for i in missing:
            found[i] = by_digest.get(turn.hits[i].thumbnail_digest or "")
        return found

    def _cached_hits(self, traj: Trajectory, turn: Turn) -> list[Any]:
        cache = self._cache(traj)
        if cache is None:
            return []
        from mmsearch_gym.search.base import ImageQuery

        k = int((traj.env.get("limits") or {}).get("top_k", 5))
        try:
            if turn.action["kind"] == "text_search":
                key = cache.key_for_text(str(turn.action.get("query", "")), k)
            else:
                query = ImageQuery(None, box=turn.box, digest=traj.image.digest)  # type: ignore[arg-type]
                key = cache.key_for_image(query, k)
            entry = cache.get_entry(key)
        except Exception:
            return []
        return list(entry.hits) if entry is not None else []

    def _cache(self, traj: Trajectory) -> Any:
        record = traj.env.get("cache")
        if not record or not record.get("dir"):
            return None
        directory = str(record["dir"])
        if directory not in self._caches:
            self._caches[directory] = None
            if (Path(directory) / "cache.db").is_file():
                from mmsearch_gym.search.cache import SearchCache

                try:
                    self._caches[directory] = SearchCache(None, directory, mode="replay", name=record["name"],
                                                          version=record["version"], params=record.get("params"))
                except Exception:
                    pass
        return self._caches[directory]

    def close(self) -> None:
        for cache in self._caches.values():
            if cache is not None:
                cache.store.close()  # not cache.close(): that would write hit counters into the user's cache
        self._caches.clear()


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


_BEHAVIOUR_HEADS = {"episodes": "episodes", "crop_searches": "crop searches / ep",
                    "whole_image_searches": "whole-image searches / ep", "text_calls": "text searches / ep",
                    "text_refinements": "refined queries / ep", "answered_without_search": "answered without search %",
                    "answered_after_image_search": "answered after image search %",
                    "answered_after_text_search": "answered after text search %", "unanswered": "no answer %"}
"""The search-behaviour table's headings, by the name of the :class:`~mmsearch_gym.metrics.Metrics` value."""


def _metrics_table(trajectories: Sequence[Trajectory]) -> str:
    """The eval table (class ``metrics``) and its search-behaviour block (class ``behaviour``)."""
    from mmsearch_gym.evaluate import BEHAVIOUR_COLUMNS, EvalReport, table_cell, table_rows

    groups: dict[str, list[Trajectory]] = {}
    for traj in trajectories:
        groups.setdefault(traj.policy, []).append(traj)
    reports = {policy: EvalReport.from_trajectories(items) for policy, items in groups.items()}
    rows_of_table = table_rows(reports)
    head = ("<tr><th>policy</th><th>category</th><th class=num>episodes</th><th class=num>accuracy %</th>"
            "<th class=num>search ratio %</th><th class=num>image searches / ep</th>"
            "<th class=num>text searches / ep</th><th class=num>format valid %</th><th class=num>mean reward</th></tr>")
    rows = []
    for policy, category, m in rows_of_table:
        cls = " class=overall" if category == "all" else ""
        rows.append(f"<tr{cls}><td>{_e(policy)}</td><td>{_e(category)}</td><td class=num>{m.episodes}</td>"
                    f"<td class=num>{100 * m.accuracy:.1f}</td><td class=num>{100 * m.search_ratio:.1f}</td>"
                    f"<td class=num>{m.image_calls:.2f}</td><td class=num>{m.text_calls:.2f}</td>"
                    f"<td class=num>{100 * m.format_rate:.1f}</td><td class=num>{m.mean_reward:.3f}</td></tr>")
    attrs = [attr for _, attr in BEHAVIOUR_COLUMNS]
    behaviour_head = "<tr><th>policy</th><th>category</th>" + "".join(
        f"<th class=num>{_e(_BEHAVIOUR_HEADS[attr])}</th>" for attr in attrs) + "</tr>"
    behaviour_rows = []
    for policy, category, m in rows_of_table:
        cls = " class=overall" if category == "all" else ""
        cells = "".join(f"<td class=num>{table_cell(m, attr)}</td>" for attr in attrs)
        behaviour_rows.append(f"<tr{cls}><td>{_e(policy)}</td><td>{_e(category)}</td>{cells}</tr>")
    return (f"<table class=metrics><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
            "<h3 class=behaviour-title>Search behaviour</h3>"
            f"<table class=behaviour><thead>{behaviour_head}</thead><tbody>{''.join(behaviour_rows)}</tbody></table>")


def _anchor(index: int) -> str:
    return f"ep-{index}"


def _verdict(traj: Trajectory) -> str:
    return "<span class=ok title=correct>&#10003;</span>" if traj.correct else \
        "<span class=bad title=wrong>&#10007;</span>"


def _index_table(trajectories: Sequence[Trajectory], shown: set[int]) -> str:
    rows = []
    for i, traj in enumerate(trajectories):
        label = f"<a href=\"#{_anchor(i)}\">{traj.episode}</a>" if i in shown else str(traj.episode)
        searches = traj.image_searches + traj.text_searches
        rows.append(f"<tr><td>{_e(traj.policy)}</td><td class=num>{label}</td><td class=id>{_e(traj.task_id)}</td>"
                    f"<td>{_e(traj.category)}</td><td class=q>{_e(_clip(traj.question, 160))}</td>"
                    f"<td>{_e(_clip(traj.reward.answer or '', 60))}</td><td>{_verdict(traj)}</td>"
                    f"<td class=num>{searches}</td><td class=num>{traj.reward.reward:.3f}</td></tr>")
    head = ("<tr><th>policy</th><th class=num>episode</th><th>task</th><th>category</th><th>question</th>"
            "<th>answer</th><th></th><th class=num>searches</th><th class=num>reward</th></tr>")
    return f"<table class=episodes><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _scene(traj: Trajectory, picture: tuple[bytes, tuple[int, int]] | None) -> str:
    width, height = max(1, traj.image.width), max(1, traj.image.height)
    boxes = [(n, t.box) for n, t in enumerate(traj.turns, 1) if t.box is not None]
    url = _data_url(picture[0]) if picture is not None else None
    if url is None:
        note = ("task image not embedded (record with --embed-images, or render where the task source is "
                "available)")
        listing = "".join(f"<br>crop of turn {n}: {_e(','.join(str(v) for v in box))}" for n, box in boxes)
        digest = _e(traj.image.digest[:16])
        return f"<div class=placeholder>{_e(note)}<br><small>sha256 {digest}…</small>{listing}</div>"
    size = max(10, min(width, height) // 16)  # label font size in image pixels
    parts = [f"<svg class=scene viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\" role=img "
             f"aria-label=\"task image with {len(boxes)} crop boxes\">",
             f"<image href=\"{url}\" x=0 y=0 width={width} height={height} preserveAspectRatio=none />"]
    for n, box in boxes:
        x1, y1, x2, y2 = (int(v) for v in box)  # type: ignore[union-attr]
        geometry = f"x={x1} y={y1} width={x2 - x1} height={y2 - y1}"
        label_y = y1 - size - 4 if y1 >= size + 4 else y2 if y2 + size + 4 <= height else y1
        parts.append(f"<rect class=halo {geometry} /><rect class=crop {geometry}>"
                     f"<title>crop of turn {n}: {x1},{y1},{x2},{y2}</title></rect>")
        parts.append(f"<rect class=tag x={x1} y={label_y} width={int(size * 3.6)} height={size + 4} />"
                     f"<text x={x1 + 3} y={label_y + size} font-size={size}>turn {n}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _action_line(turn: Turn) -> tuple[str, str]:
    """(css kind, HTML description) of a turn's action."""
    action = turn.action
    kind = str(action.get("kind", "invalid"))
    if kind == "text_search":
        return kind, f"Text search: <span class=query><q>{_e(action.get('query', ''))}</q></span>"
    if kind == "image_search":
        region = action.get("region") or {}
        if turn.box is not None:
            where = f"crop {','.join(str(v) for v in turn.box)}"
            if region.get("kind") == "expression":
                where = f"“{_e(region.get('expression') or '')}” → {where}"
            return kind, f"Image search of a {where}"
        return kind, "Image search of the whole image"
    if kind == "answer":
        return kind, f"Answer: <q>{_e(action.get('text', ''))}</q>"
    return "invalid", f"Invalid turn: {_e(action.get('reason', ''))}"


def _hits(traj: Trajectory, turn: Turn, resolver: ImageResolver) -> str:
    if not turn.hits:
        return ""
    thumbs = resolver.thumbnails(traj, turn)
    items = []
    for hit, thumb in zip(turn.hits, thumbs, strict=True):
        url = _data_url(thumb)
        img = f"<img src=\"{url}\" alt=\"thumbnail\">" if url else ""
        href = _safe_href(hit.url)
        title = (f"<a class=title href=\"{_e(href)}\" rel=\"noopener noreferrer nofollow\">{_e(hit.title)}</a>"
                 if href else f"<span class=title>{_e(hit.title)}</span>")
        items.append(f"<li><div class=hit>{img}<div>{title} <span class=score>score {hit.score:.3f}</span>"
                     f"<div class=url>{_e(hit.url)}</div><p class=snippet>{_e(_clip(hit.snippet, 600))}</p>"
                     "</div></div></li>")
    return f"<ol class=hits>{''.join(items)}</ol>"


def _turn(traj: Trajectory, number: int, turn: Turn, resolver: ImageResolver) -> str:
    kind, line = _action_line(turn)
    parts = [f"<li class=\"turn {kind}\"><div class=turn-head>Turn {number} · {line}</div>"]
    reasoning = turn.reasoning
    if reasoning:
        parts.append(f"<p class=reason>{_e(reasoning)}</p>")
    if turn.search_error:
        parts.append(f"<p class=error>Search failed: {_e(turn.search_error)}</p>")
    parts.append(_hits(traj, turn, resolver))
    if kind == "invalid" and turn.observation:
        parts.append(f"<p class=error>{_e(turn.observation)}</p>")
    parts.append(f"<details><summary>raw model text</summary><pre>{_e(turn.text)}</pre></details>")
    if turn.observation:
        parts.append(f"<details><summary>observation</summary><pre>{_e(turn.observation)}</pre></details>")
    flags = [f for f, on in (("terminated", turn.terminated), ("truncated", turn.truncated)) if on]
    if flags or turn.reward:
        parts.append(f"<div class=score>step reward {turn.reward:.3f} {' '.join(flags)}</div>")
    parts.append("</li>")
    return "".join(parts)


def _breakdown(traj: Trajectory) -> str:
    r = traj.reward
    rows = [("reward", f"{r.reward:.4f}"), ("correct (raw score)", f"{r.raw_score:.3f}"),
            ("score after search penalty", f"{r.score:.3f}"), ("search penalty", f"{r.penalty:.3f}"),
            ("format valid", "yes" if r.format >= 1 else "no"),
            ("searches counted by the scorer", f"{r.searches} ({r.image_searches} image, {r.text_searches} text)"),
            ("searches run", f"{traj.image_searches} image, {traj.text_searches} text"),
            ("spec", str((traj.env.get("reward") or {}).get("name", "")))]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table class=breakdown>{body}</table>"


def _episode(index: int, traj: Trajectory, resolver: ImageResolver) -> str:
    picture = resolver.task_image(traj)
    turns = "".join(_turn(traj, n, t, resolver) for n, t in enumerate(traj.turns, 1))
    facts = (f"<dl class=facts><dt>question</dt><dd>{_e(traj.question)}</dd>"
             f"<dt>gold answers</dt><dd>{_e(' | '.join(traj.answers))}</dd>"
             f"<dt>predicted</dt><dd>{_e(traj.reward.answer if traj.reward.answer is not None else '(no answer)')} "
             f"{_verdict(traj)}</dd></dl>{_breakdown(traj)}")
    return (f"<section class=episode id=\"{_anchor(index)}\"><div class=ep-head><h3>Episode {traj.episode} · "
            f"task {_e(traj.task_id)}</h3><div><span class=badge>{_e(traj.policy)}</span>"
            f"<span class=badge>{_e(traj.category)}</span><span class=badge>{len(traj.turns)} turns</span>"
            f"<span class=badge>reward {traj.reward.reward:.3f}</span> <a href=\"#index\">index ↑</a></div></div>"
            f"<div class=task><div>{_scene(traj, picture)}</div><div>{facts}</div></div>"
            f"<ol class=turns>{turns}</ol></section>")


def render_report(trajectories: Iterable[Trajectory], *, title: str = "mmsearch_gym report",
                  max_episodes: int | None = DEFAULT_MAX_EPISODES, resolve_images: bool = True) -> str:
    """The HTML text of a report over ``trajectories`` (any number of policies).

    ``max_episodes`` bounds how many episodes of each policy are shown in full (None: all); the
    metrics table and the index always cover every episode.
    """
    from mmsearch_gym import __version__

    items = list(trajectories)
    first_seen: dict[str, int] = {}
    for traj in items:
        first_seen.setdefault(traj.policy, len(first_seen))
    items.sort(key=lambda t: (first_seen[t.policy], t.episode))  # files are in completion order
    if not items:
        from mmsearch_gym.errors import ConfigError

        raise ConfigError("no trajectories to render")
    shown: list[int] = []
    per_policy: dict[str, int] = {}
    for i, traj in enumerate(items):
        count = per_policy.get(traj.policy, 0)
        if max_episodes is None or count < max_episodes:
            shown.append(i)
        per_policy[traj.policy] = count + 1
    resolver = ImageResolver(enabled=resolve_images)
    try:
        sections = "".join(_episode(i, items[i], resolver) for i in shown)
    finally:
        resolver.close()
    envs = sorted({str(t.env.get("id") or t.env.get("tasks", {}).get("name", "custom")) for t in items})
    policies = sorted({t.policy for t in items})
    more = (f"<p class=sub>{len(items) - len(shown)} more episodes are in the index but not shown in full "
            "(raise --max-episodes).</p>" if len(shown) < len(items) else "")
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        "<meta name=viewport content=\"width=device-width,initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><p class=sub>{len(items)} episodes · env {_e(', '.join(envs))} · policies "
        f"{_e(', '.join(policies))}</p>"
        f"<h2 id=index>Metrics</h2>{_metrics_table(items)}"
        "<p class=sub>accuracy: correct final answers; search ratio: episodes with at least one search; "
        "searches per episode as the env ran them; format valid: the dialect's format rule; crop / whole-image: "
        "image searches on a crop box or on the whole image; refined queries: text searches right after a text "
        "search; answered after ...: the kind of the last search before the answer (the four shares sum to "
        "100).</p>"
        f"<h2>Episodes</h2><details{' open' if len(items) <= _OPEN_INDEX else ''}><summary>index of all "
        f"{len(items)} episodes</summary>{_index_table(items, set(shown))}</details>{more}"
        f"{sections}"
        f"<footer>generated by mmsearch_gym {_e(__version__)}</footer></main></body></html>\n"
    )


def write_report(trajectories: str | Path | Iterable[Trajectory], output: str | Path, **options: Any) -> Path:
    """Render ``trajectories`` (a JSONL path or records) to ``output``; returns the path."""
    items = iter_trajectories(trajectories) if isinstance(trajectories, (str, Path)) else trajectories
    text = render_report(items, **options)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path

