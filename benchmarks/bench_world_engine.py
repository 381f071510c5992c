"""Benchmark the built-in world: build time, load time, search latency and image-search quality.

    python benchmarks/bench_world_engine.py [--scenes 200] [--out benchmarks/results/world_engine.json]

Latencies are measured on one core (CPU affinity pinned, BLAS single-threaded). Quality is
top-1 retrieval: every reference picture of the world under each augmentation (rescale,
JPEG 40-70, rotation up to 8 degrees, colour jitter of 20%, 15% occlusion, all together), and
synthetic scenes (a background photo with 2-4 pasted flags) searched whole, cropped to a
flag's box, and cropped loosely around it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance
from tqdm import tqdm

from mmsearch_gym.search.base import ImageQuery
from mmsearch_gym.search.image_features import image_feature
from mmsearch_gym.world.engine import WorldSearchEngine
from mmsearch_gym.world.knowledge import DATA_DIR, FACT_LABELS, Knowledge

ROOT = Path(__file__).resolve().parent.parent


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4), "n": int(ms.size)}


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def augment(name: str, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One of the perturbations a searched picture may have gone through."""
    if name == "identity":
        return image
    if name == "rescale":
        scale = rng.uniform(0.5, 2.0) * 150 / max(image.size)
        return image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))),
                            Image.Resampling.BILINEAR)
    if name == "jpeg":
        return _jpeg(image, int(rng.integers(40, 71)))
    if name == "rotate":
        return image.rotate(float(rng.uniform(-8, 8)), Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    if name == "rotate_expand_white":
        return image.rotate(float(rng.uniform(-8, 8)), Image.Resampling.BILINEAR, expand=True,
                            fillcolor=(255, 255, 255))
    if name == "colour":
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2))
        return ImageEnhance.Color(image).enhance(rng.uniform(0.8, 1.2))
    if name == "occlude":
        w, h = image.size
        ow = min(w, round(np.sqrt(0.15 * w * h * rng.uniform(0.5, 2.0))))
        oh = min(h, round(0.15 * w * h / ow))
        x, y = int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))
        image = image.copy()
        image.paste(tuple(int(v) for v in rng.integers(0, 256, 3)), (x, y, x + ow, y + oh))
        return image
    if name == "all":
        for step in ("colour", "rotate", "occlude", "rescale", "jpeg"):
            image = augment(step, image, rng)
        return image
    raise KeyError(name)


AUGMENTATIONS = ("identity", "rescale", "jpeg", "rotate", "rotate_expand_white", "colour", "occlude", "all")


def render_scene(knowledge: Knowledge, rng: np.random.Generator):
    photos = [e.id for e in knowledge.photos()]
    countries = [e.id for e in knowledge.countries()]
    photo = photos[int(rng.integers(len(photos)))]
    background = knowledge.image(photo)
    width = int(rng.integers(480, 800))
    scene = background.resize((width, round(background.height * width / background.width)),
                              Image.Resampling.BILINEAR)
    boxes = []
    for pick in rng.choice(len(countries), int(rng.integers(2, 5)), replace=False):
        flag = knowledge.image(countries[pick])
        fw = round(width * rng.uniform(0.12, 0.20))
        fh = round(fw * flag.height / flag.width)
        for _ in range(100):
            x, y = int(rng.integers(0, width - fw)), int(rng.integers(0, scene.height - fh))
            if all(x + fw <= b[0] or b[2] <= x or y + fh <= b[1] or b[3] <= y for b, _ in boxes):
                break
        scene.paste(flag.resize((fw, fh), Image.Resampling.LANCZOS), (x, y))
        boxes.append(((x, y, x + fw, y + fh), countries[pick]))
    return _jpeg(scene, 85), photo, boxes


def bench_build() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mmsearch_gym.world.build", "--quiet", "--out", tmp],
                              capture_output=True, text=True, cwd=ROOT, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            return {"ok": False, "error": proc.stderr.strip().splitlines()[-1:]}
        identical = all((Path(tmp) / p.relative_to(DATA_DIR)).read_bytes() == p.read_bytes()
                        for p in DATA_DIR.rglob("*") if p.is_file())
        return {"ok": True, "seconds": round(seconds, 3), "identical_to_shipped": identical}


def bench_load() -> dict[str, float]:
    """Cold start in a fresh process: import, load(), first text and first image query."""
    code = (
        "import time; t0 = time.perf_counter();"
        "from mmsearch_gym.world.engine import WorldSearchEngine; from mmsearch_gym.search.base import ImageQuery;"
        "from PIL import Image; t1 = time.perf_counter(); e = WorldSearchEngine.load(); t2 = time.perf_counter();"
        "e.text_search('capital of France', 5); t3 = time.perf_counter();"
        "e.image_search(ImageQuery(Image.new('RGB', (200, 150), (200, 30, 30))), 5); t4 = time.perf_counter();"
        "import json; print(json.dumps({'import_s': t1 - t0, 'load_s': t2 - t1, 'first_text_query_s': t3 - t2,"
        " 'first_image_query_s': t4 - t3, 'load_plus_first_queries_s': t4 - t1}))"
    )
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True, cwd=ROOT).stdout) for _ in range(3)]
    return {key: round(float(np.median([r[key] for r in runs])), 4) for key in runs[0]}


def bench_text(engine: WorldSearchEngine) -> dict[str, object]:
    knowledge = engine.knowledge
    queries = []
    for country in knowledge.countries():
        queries.append(f"What is the capital of {country.name}?")
        for key in ("national_anthem", "highest_point", "currency"):
            if key in country.facts:
                queries.append(f"{country.name} {FACT_LABELS[key].lower()}")
        queries.append(f"flag {country.description[:60]}")
    for q in queries[:50]:
        engine.text_search(q, 5)
    times = []
    for q in queries:
        start = time.perf_counter()
        engine.text_search(q, 5)
        times.append(time.perf_counter() - start)
    return _percentiles(times)


def bench_image(engine: WorldSearchEngine, rng: np.random.Generator) -> dict[str, object]:
    knowledge = engine.knowledge
    queries = []
    for entity_id in knowledge.entities:
        image = augment("jpeg", knowledge.image(entity_id).resize((200, 140), Image.Resampling.BILINEAR), rng)
        queries.append(ImageQuery(image))
    for _ in range(60):
        scene, _, boxes = render_scene(knowledge, rng)
        queries.append(ImageQuery(scene))
        queries.extend(ImageQuery(scene, box=box) for box, _ in boxes)
    for q in queries[:20]:
        engine.image_search(q, 5)
    times, feature_times = [], []
    for q in queries:
        start = time.perf_counter()
        engine.image_search(q, 5)
        times.append(time.perf_counter() - start)
    probe = knowledge.image("fr").resize((200, 150), Image.Resampling.BILINEAR)
    for _ in range(300):
        start = time.perf_counter()
        image_feature(probe)
        feature_times.append(time.perf_counter() - start)
    return {"image_search": _percentiles(times), "image_feature_200x150": _percentiles(feature_times)}


def bench_robustness(engine: WorldSearchEngine) -> dict[str, dict[str, float]]:
    knowledge = engine.knowledge
    out = {}
    for name in tqdm(AUGMENTATIONS, desc="augmentations"):
        rng = np.random.default_rng(11)
        hits = {"country": [], "photo": []}
        for entity in knowledge.entities.values():
            query = augment(name, knowledge.image(entity.id), rng)
            top = engine.search_pixels(query, 1)[0][0]
            hits[entity.kind].append(top.id == entity.id)
        out[name] = {"flags_top1": round(float(np.mean(hits["country"])), 4),
                     "photos_top1": round(float(np.mean(hits["photo"])), 4),
                     "n_flags": len(hits["country"]), "n_photos": len(hits["photo"])}
    return out


def bench_scenes(engine: WorldSearchEngine, scenes: int) -> dict[str, float]:
    knowledge = engine.knowledge
    rng = np.random.default_rng(5)
    photo_first = flag_first = crops = crop_ok = loose_ok = 0
    for _ in tqdm(range(scenes), desc="scenes"):
        scene, photo, boxes = render_scene(knowledge, rng)
        top = engine.search_pixels(scene, 1)[0][0]
        photo_first += top.id == photo
        flag_first += top.id in {c for _, c in boxes}
        for (x1, y1, x2, y2), country in boxes:
            crops += 1
            crop_ok += engine.search_pixels(scene.crop((x1, y1, x2, y2)), 1)[0][0].id == country
            mx = round((x2 - x1) * rng.uniform(0.03, 0.12))
            my = round((y2 - y1) * rng.uniform(0.03, 0.12))
            loose = (max(0, x1 - mx), max(0, y1 - my), min(scene.width, x2 + mx), min(scene.height, y2 + my))
            loose_ok += engine.search_pixels(scene.crop(loose), 1)[0][0].id == country
    return {"scenes": scenes, "crops": crops,
            "whole_scene_top1_is_background_photo": round(photo_first / scenes, 4),
            "whole_scene_top1_is_a_pasted_flag": round(flag_first / scenes, 4),
            "crop_to_box_top1_is_the_flag": round(crop_ok / crops, 4),
            "loose_crop_top1_is_the_flag": round(loose_ok / crops, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "world_engine.json")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    engine = WorldSearchEngine.load()
    knowledge = engine.knowledge
    data_bytes = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file())
    result = {
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "cores_used": 1},
        "world": {"countries": len(knowledge.countries()), "photos": len(knowledge.photos()),
                  "monuments": len(knowledge.monuments()), "passages": len(knowledge.passages()),
                  "data_mb": round(data_bytes / 2**20, 3), "version": engine.version},
        "build": None if args.skip_build else bench_build(),
        "load": bench_load(),
        "text_search": bench_text(engine),
        **bench_image(engine, np.random.default_rng(3)),
        "augmentation_robustness": bench_robustness(engine),
        "scenes": bench_scenes(engine, args.scenes),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
