"""The built-in world's photographs: scikit-image sample photos and what we write about them.

Used only by :mod:`mmsearch_gym.world.build` (never at run time). The titles and descriptions
are our own words; each photo's credit, licence and origin go into ``ATTRIBUTION.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

PHOTO_LONG_SIDE = 512


@dataclass(frozen=True)
class PhotoSource:
    """One scikit-image sample photo and what we write about it (our own words)."""

    id: str
    loader: str
    title: str
    description: str
    subject: str
    credit: str
    licence: str
    origin: str


PHOTOS: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", "astronaut", "Astronaut Eileen Collins (NASA portrait)",
                "Official NASA portrait of astronaut Eileen Collins in an orange launch and entry "
                "suit, holding a helmet, with an American flag and a space shuttle model behind her",
                "Eileen Collins", "NASA", "public domain (NASA, no known copyright restrictions)",
                "https://flic.kr/p/r9qvLn"),
    PhotoSource("coffee", "coffee", "Cup of espresso on a wooden table",
                "A red cup of espresso on a red saucer with a spoon, on a wooden cafe table",
                "espresso", "Rachel Michetti, courtesy of Pikolo Espresso Bar",
                "CC0 (dedicated by the photographer)", "https://scikit-image.org/"),
    PhotoSource("chelsea", "chelsea", "Chelsea the cat",
                "Close-up of Chelsea, a tabby cat with green eyes, looking at the camera",
                "Chelsea the cat", "Stefan van der Walt", "CC0 (dedicated by the photographer)",
                "https://scikit-image.org/"),
    PhotoSource("rocket", "rocket", "Falcon 9 rocket carrying DSCOVR on the launch pad",
                "A SpaceX Falcon 9 rocket carrying the DSCOVR satellite on Space Launch Complex 40 "
                "at Cape Canaveral at dusk, between lightning towers",
                "Falcon 9", "SpaceX", "public domain (released by SpaceX)",
                "https://www.flickr.com/photos/spacexphotos/16511594820/"),
    PhotoSource("retina", "retina", "Fundus photograph of a human retina",
                "A fundus photograph of a normal left human eye: the orange-red retina with its blood "
                "vessels and the optic disc", "human retina", "Mikael Haggstrom",
                "CC0 1.0 (Wikimedia Commons)",
                "https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg"),
    PhotoSource("camera", "camera", "Cameraman with a film camera on a tripod",
                "Black-and-white photograph of a man in a dark coat filming with a camera on a tripod "
                "on a lawn, with buildings in the distance", "cameraman", "Lav Varshney",
                "CC0 (dedicated by the photographer)", "https://scikit-image.org/"),
    PhotoSource("brick", "brick", "Brick wall",
                "Grey photograph of a wall of long bricks laid in a running bond pattern",
                "brick wall", "CC0Textures (Bricks25)", "CC0 1.0",
                "https://cc0textures.com/view.php?tex=Bricks25"),
    PhotoSource("grass", "grass", "Grass close-up",
                "Grey close-up photograph of a patch of grass with fallen leaves",
                "grass", "linolafett (DeviantArt)", "CC0 1.0",
                "https://www.deviantart.com/linolafett/art/Grass-01-434853879"),
    PhotoSource("gravel", "gravel", "Gravel close-up",
                "Grey close-up photograph of a bed of small gravel stones",
                "gravel", "CC0Textures (Gravel04)", "CC0 1.0",
                "https://cc0textures.com/view.php?tex=Gravel04"),
)
"""Scene backgrounds. The Hubble deep field is left out on purpose: it is almost black, so
the small flags pasted on a scene dominate it and whole-scene search stops finding the photo."""

SKIMAGE_DOCS_URL = "https://scikit-image.org/docs/stable/api/skimage.data.html#skimage.data.{loader}"


def photo_record(photo: PhotoSource) -> dict[str, Any]:
    url = SKIMAGE_DOCS_URL.format(loader=photo.loader)
    facts = {"subject": photo.subject, "credit": photo.credit}
    text = (f"{photo.title}. Subject: {photo.subject}. Credit: {photo.credit}. "
            f"Description: {photo.description}. Licence: {photo.licence}. "
            f"Source: a sample photograph distributed with scikit-image.")
    return {
        "id": photo.id,
        "kind": "photo",
        "name": photo.title,
        "aliases": [photo.subject] if photo.subject.casefold() != photo.title.casefold() else [],
        "facts": facts,
        "passages": [{"section": "Photo", "title": photo.title, "url": url, "text": text}],
        "description": photo.description,
        "image_title": photo.title,
        "image_url": url,
        "image_snippet": f"{photo.title}. {photo.description}.",
    }


def photo_image(loader: Callable[[], np.ndarray]) -> Image.Image:
    array = loader()
    image = Image.fromarray(np.asarray(array)).convert("RGB")
    scale = PHOTO_LONG_SIDE / max(image.size)
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.LANCZOS)
    return image
