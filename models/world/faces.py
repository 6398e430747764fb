"""Avatars: identity parameters of the procedural 2-D face, sampled per avatar, and their description.

Colours come from named palettes with a small per-avatar jitter, so the instruction text can name them.
Geometry is in units of the image side (0..1), so one avatar renders at any size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["Avatar", "describe_face", "sample_avatars"]

SKIN_TONES = {
    "pale": (246, 222, 205),
    "fair": (238, 200, 172),
    "light": (225, 184, 150),
    "olive": (198, 156, 112),
    "tan": (184, 134, 96),
    "brown": (150, 100, 68),
    "dark brown": (108, 70, 46),
    "deep brown": (80, 52, 36),
}
HAIR_COLOURS = {
    "black": (28, 24, 24),
    "dark brown": (66, 42, 28),
    "brown": (112, 72, 40),
    "auburn": (140, 62, 34),
    "red": (184, 70, 38),
    "blonde": (226, 190, 116),
    "grey": (150, 150, 150),
    "white": (232, 230, 226),
    "blue": (50, 90, 190),
    "pink": (222, 110, 160),
}
EYE_COLOURS = {"brown": (96, 58, 30), "blue": (60, 110, 180), "green": (70, 130, 80), "grey": (120, 130, 140)}
BACKGROUNDS = {
    "teal": (40, 128, 128),
    "navy": (34, 44, 96),
    "beige": (222, 210, 180),
    "grey": (128, 128, 128),
    "olive": (112, 116, 50),
    "maroon": (110, 34, 44),
    "lavender": (180, 164, 220),
    "sky blue": (130, 190, 232),
    "mint": (168, 226, 190),
    "peach": (246, 190, 150),
    "charcoal": (50, 52, 56),
    "mustard": (210, 170, 50),
}
SHIRT_COLOURS = ((200, 50, 50), (40, 90, 170), (60, 140, 70), (230, 230, 230), (30, 30, 36), (240, 180, 40),
                 (130, 70, 150), (230, 120, 40), (90, 90, 100), (40, 150, 160))  # fmt: skip
FACE_SHAPES = ("round", "oval", "long", "square", "heart")
HAIR_STYLES = ("bald", "buzzed", "short", "long", "bob", "curly", "bun")
EYE_SHAPES = ("round", "almond", "narrow")
COLOUR_JITTER = 8  # ± per channel, 0..255


@dataclass(frozen=True)
class Avatar:
    """Identity of one face; colours are RGB 0..255, sizes are fractions of the image side."""

    id: str
    face_shape: str
    face_width: float  # half-width of the face
    face_height: float  # half-height of the face
    skin_name: str
    skin: tuple[int, int, int]
    hair_style: str
    hair_name: str
    hair: tuple[int, int, int]
    eye_shape: str
    eye_name: str
    eye_colour: tuple[int, int, int]
    eye_spacing: float  # eye centre offset from the face centre, in face half-widths
    mouth_width: float  # mouth half-width at rest, in face half-widths
    lip: tuple[int, int, int]
    background_name: str
    background: tuple[int, int, int]
    shirt: tuple[int, int, int]
    split: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Avatar:
        colours = ("skin", "hair", "eye_colour", "lip", "background", "shirt")
        return cls(**{k: tuple(v) if k in colours else v for k, v in values.items()})


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    noise = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    return tuple(int(c) for c in np.clip(np.array(rgb) + noise, 0, 255))


def _choice(rng: np.random.Generator, options: tuple | list) -> object:
    return options[rng.integers(len(options))]


def sample_avatars(count: int, rng: np.random.Generator, splits: list[str]) -> list[Avatar]:
    """``count`` avatars with ids a000..; ``splits`` holds one split name per avatar. No two share all the
    named attributes (face shape, skin, hair style and colour, eye shape and colour, background)."""
    seen: set[tuple] = set()
    avatars: list[Avatar] = []
    while len(avatars) < count:
        face_shape = _choice(rng, FACE_SHAPES)
        skin_name = _choice(rng, list(SKIN_TONES))
        hair_style = _choice(rng, HAIR_STYLES)
        hair_name = _choice(rng, list(HAIR_COLOURS))
        eye_shape = _choice(rng, EYE_SHAPES)
        eye_name = _choice(rng, list(EYE_COLOURS))
        background_name = _choice(rng, list(BACKGROUNDS))
        key = (face_shape, skin_name, hair_style, hair_name, eye_shape, eye_name, background_name)
        width = {"round": 0.25, "oval": 0.22, "long": 0.2, "square": 0.24, "heart": 0.23}[face_shape]
        height = {"round": 0.28, "oval": 0.3, "long": 0.33, "square": 0.29, "heart": 0.3}[face_shape]
        skin = _jitter(rng, SKIN_TONES[skin_name])
        lip_tint = np.array([0.82, 0.55, 0.58]) * np.array(skin) + np.array([30, 8, 12])
        lip = _jitter(rng, tuple(int(c) for c in np.clip(lip_tint, 0, 255)))
        avatar = Avatar(
            id=f"a{len(avatars):03d}",
            face_shape=face_shape,
            face_width=round(width * float(rng.uniform(0.94, 1.06)), 4),
            face_height=round(height * float(rng.uniform(0.95, 1.05)), 4),
            skin_name=skin_name,
            skin=skin,
            hair_style=hair_style,
            hair_name=hair_name,
            hair=_jitter(rng, HAIR_COLOURS[hair_name]),
            eye_shape=eye_shape,
            eye_name=eye_name,
            eye_colour=_jitter(rng, EYE_COLOURS[eye_name]),
            eye_spacing=round(float(rng.uniform(0.36, 0.46)), 4),
            mouth_width=round(float(rng.uniform(0.3, 0.4)), 4),
            lip=lip,
            background_name=background_name,
            background=_jitter(rng, BACKGROUNDS[background_name]),
            shirt=_jitter(rng, _choice(rng, SHIRT_COLOURS)),
            split=splits[len(avatars)],
        )
        if key in seen:
            continue
        seen.add(key)
        avatars.append(avatar)
    return avatars


def describe_face(avatar: Avatar) -> str:
    """A short description: "a round face with short red hair, light skin and almond green eyes, on a teal
    background"."""
    hair = {
        "bald": "a bald head",
        "buzzed": f"buzzed {avatar.hair_name} hair",
        "bun": f"{avatar.hair_name} hair in a bun",
        "bob": f"a {avatar.hair_name} bob",
    }.get(avatar.hair_style, f"{avatar.hair_style} {avatar.hair_name} hair")
    article = "an" if avatar.face_shape[0] in "aeiou" else "a"
    return (
        f"{article} {avatar.face_shape} face with {hair}, {avatar.skin_name} skin and {avatar.eye_shape} "
        f"{avatar.eye_name} eyes, on a {avatar.background_name} background"
    )
