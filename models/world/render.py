"""The procedural 2-D face, drawn with numpy: static layers once per avatar, then mouth, eyelids and head
position per frame.

Layers, back to front: the background (static), the head (moves: hair behind, neck, ears, face, hair in front,
brows, nose, then per frame the eyes with their lids and the mouth), the shoulders (static, over the neck).
Every shape has a one-pixel soft edge and head motion is sub-pixel (bilinear), so the pictures change smoothly.
The head is drawn on a canvas padded by ``PAD`` pixels, which bounds the head motion.

The renderer knows where everything is: :attr:`FaceRenderer.mouth_box` (the box the mouth stays inside under
any head motion) and :attr:`FaceRenderer.regions` (skin, hair and background pixels that keep their colour
under any head motion), which the lip-sync and identity measures read.
"""

from __future__ import annotations

import math

import numpy as np

from sonate.models.world.faces import Avatar

__all__ = ["MAX_HEAD_SHIFT", "PAD", "FaceRenderer"]

PAD = 3  # pixels of head canvas around the image
MAX_HEAD_SHIFT = PAD - 1.0  # pixels, each axis: the head never moves further
CAVITY = np.array([40, 12, 18], np.float32) / 255
TEETH = np.array([236, 232, 220], np.float32) / 255
EYE_WHITE = np.array([245, 245, 240], np.float32) / 255
PUPIL = np.array([20, 20, 24], np.float32) / 255
# hair in front: (top of the hairline above the face centre, how far it falls at the sides), in face half-heights
HAIRLINES = {"buzzed": (0.62, 0.55), "short": (0.5, 0.6), "long": (0.45, 0.8), "bob": (0.3, 0.9),
             "curly": (0.45, 0.6), "bun": (0.55, 0.6)}  # fmt: skip
EYE_SIZES = {"round": (0.15, 0.12), "almond": (0.19, 0.085), "narrow": (0.2, 0.06)}  # half-axes / face half-axes
FACE_POWERS = {"round": 2.0, "oval": 2.0, "long": 2.1, "square": 2.9, "heart": 2.0}  # superellipse exponents


def _coverage(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry, power: float = 2.0) -> np.ndarray:
    """Coverage 0..1 of a superellipse, soft over one pixel; any argument may be an array (broadcast)."""
    dx, dy = x - cx, y - cy
    d = (np.abs(dx / rx) ** power + np.abs(dy / ry) ** power) ** (1.0 / power)
    signed_distance = np.hypot(dx, dy) * (1.0 - 1.0 / np.maximum(d, 1e-6))  # pixels, negative inside
    return np.clip(0.5 - signed_distance, 0.0, 1.0).astype(np.float32)


def _below(y: np.ndarray, edge) -> np.ndarray:
    """Coverage of the half-plane under a horizontal edge (soft over one pixel)."""
    return np.clip(y - edge + 0.5, 0.0, 1.0).astype(np.float32)


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Boolean erosion by a (2·pixels+1)² square (pixels outside the image count as outside the mask)."""
    out = mask.copy()
    for _ in range(pixels):
        padded = np.pad(out, 1, constant_values=False)
        out = padded[1:-1, 1:-1].copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out &= padded[dy : dy + out.shape[0], dx : dx + out.shape[1]]
    return out


def _rgb(colour: tuple[int, int, int], scale: float = 1.0) -> np.ndarray:
    return np.clip(np.array(colour, np.float32) / 255 * scale, 0.0, 1.0)


class _Layer:
    """A premultiplied RGBA canvas painted back to front; ``visible[label]`` is how much of each pixel shows
    paint of that label (what later paint covers is no longer visible)."""

    def __init__(self, height: int, width: int) -> None:
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.alpha = np.zeros((height, width), np.float32)
        self.visible: dict[str, np.ndarray] = {}

    def paint(self, coverage: np.ndarray, colour: np.ndarray, label: str = "other") -> None:
        self.rgb = self.rgb * (1 - coverage[..., None]) + coverage[..., None] * colour
        self.alpha = self.alpha * (1 - coverage) + coverage
        for name in self.visible:
            self.visible[name] = self.visible[name] * (1 - coverage)
        self.visible[label] = self.visible.get(label, 0.0) + coverage


class FaceRenderer:
    """Draws one avatar at ``size``×``size`` pixels."""

    def __init__(self, avatar: Avatar, size: int = 128) -> None:
        self.avatar, self.size = avatar, size
        canvas = size + 2 * PAD
        y, x = np.mgrid[0:canvas, 0:canvas].astype(np.float32) + 0.5  # pixel centres, head canvas
        cx, cy = canvas / 2, PAD + 0.47 * size
        rx, ry = avatar.face_width * size, avatar.face_height * size
        self._cx, self._cy, self._rx, self._ry = cx, cy, rx, ry
        skin = _rgb(avatar.skin)
        head = _Layer(canvas, canvas)
        hair = _rgb(avatar.hair)

        # 1. hair behind the head
        style = avatar.hair_style
        back = np.zeros_like(y)
        if style == "long":
            back = np.maximum(_coverage(x, y, cx, cy - 0.05 * ry, 1.2 * rx, 1.1 * ry), _rect(x, y, cx, cy + 0.6 * ry,
                              1.15 * rx, 0.65 * ry))  # fmt: skip
        elif style == "bob":
            back = _coverage(x, y, cx, cy, 1.22 * rx, 1.08 * ry) * (1 - _below(y, cy + 0.75 * ry))
        elif style == "curly":
            back = _bumpy(x, y, cx, cy - 0.1 * ry, 1.32 * rx, 1.16 * ry) * (1 - _below(y, cy + 0.5 * ry))
        elif style == "bun":
            back = _coverage(x, y, cx, cy - 1.02 * ry, 0.36 * rx, 0.3 * ry)
        head.paint(back, hair, "hair")
        # 2. neck and ears
        head.paint(_rect(x, y, cx, cy + 1.2 * ry, 0.45 * rx, 0.7 * ry), skin * 0.88)
        for side in (-1, 1):
            head.paint(_coverage(x, y, cx + side * 0.98 * rx, cy + 0.05 * ry, 0.16 * rx, 0.22 * ry), skin * 0.93)
        # 3. the face (a heart face narrows towards the chin)
        taper = 1.0 - 0.25 * np.clip((y - cy) / ry, 0, 1) if avatar.face_shape == "heart" else 1.0
        face = _coverage(x, y, cx, cy, rx * taper, ry, FACE_POWERS[avatar.face_shape])
        head.paint(face, skin, "skin")
        # 4. hair in front: a cap above the hairline
        if style in HAIRLINES:
            top, fall = HAIRLINES[style]
            hairline = cy - top * ry + fall * ry * ((x - cx) / rx) ** 2
            cap_shape = _bumpy if style == "curly" else _coverage
            cap = cap_shape(x, y, cx, cy - 0.04 * ry, 1.07 * rx, 1.05 * ry) * (1 - _below(y, hairline))
            colour = hair * 0.55 + skin * 0.45 if style == "buzzed" else hair
            head.paint(cap, colour, "hair")
        # 5. brows and nose
        eye_y = cy - 0.12 * ry
        ew, eh = EYE_SIZES[avatar.eye_shape][0] * rx, EYE_SIZES[avatar.eye_shape][1] * ry
        brow = hair * 0.8 if style not in ("bald", "buzzed") else skin * 0.45
        for side in (-1, 1):
            ex = cx + side * avatar.eye_spacing * rx
            head.paint(_coverage(x, y, ex, eye_y - eh - 0.07 * ry, 1.1 * ew, max(1.2, 0.035 * ry), 4.0), brow)
        head.paint(_coverage(x, y, cx, cy + 0.24 * ry, 0.1 * rx, 0.06 * ry), skin * 0.8)
        head.paint(_coverage(x, y, cx, cy + 0.08 * ry, 0.035 * rx, 0.16 * ry), skin * 0.93)
        self._head = head

        # eyes: static open eye per side, a lid drawn per frame
        self._eyes = []
        for side in (-1, 1):
            ex = cx + side * avatar.eye_spacing * rx
            box = _box(ex, eye_y, ew + 2, eh + 2, canvas)
            py, px = y[box], x[box]
            outline = _coverage(px, py, ex, eye_y, ew + 0.8, eh + 0.8)
            white = _coverage(px, py, ex, eye_y, ew, eh)
            iris_r = min(0.95 * eh, 0.55 * ew)
            iris = _coverage(px, py, ex, eye_y, iris_r, iris_r) * white
            pupil = _coverage(px, py, ex, eye_y, 0.45 * iris_r, 0.45 * iris_r) * white
            glint = _coverage(px, py, ex + 0.3 * iris_r, eye_y - 0.35 * iris_r, 0.6, 0.6) * white
            patch = _Layer(*py.shape)
            patch.rgb, patch.alpha = head.rgb[box].copy(), head.alpha[box].copy()
            for coverage, colour in ((outline, skin * 0.4), (white, EYE_WHITE), (iris, _rgb(avatar.eye_colour)),
                                     (pupil, PUPIL), (glint, EYE_WHITE)):  # fmt: skip
                patch.paint(coverage, colour)
            self._eyes.append((box, patch.rgb, outline, py[:, :1], eye_y - eh - 1.0, 2 * eh + 2.0))
        self._lid = skin * 0.9

        # mouth: a box that holds it at its widest and most open
        self._mouth_x, self._mouth_y = cx, cy + 0.52 * ry
        self._mouth_half_width = avatar.mouth_width * rx  # pixels, at rest
        self._mouth_open_px = 0.28 * ry  # cavity height when fully open
        self._lip_px = 0.045 * ry
        half_w = 1.25 * self._mouth_half_width + 2
        half_h = 0.5 * self._mouth_open_px + 1.4 * self._lip_px + 2
        self._mouth_box = _box(self._mouth_x, self._mouth_y, half_w, half_h, canvas)
        self._mouth_xy = (x[self._mouth_box][None], y[self._mouth_box][None])  # [1, h, w]

        # static background and shoulders, image coordinates
        iy, ix = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        gradient = (1.08 - 0.16 * iy / size)[..., None]
        background = np.clip(_rgb(avatar.background) * gradient, 0, 1) * 255
        shoulders = _coverage(ix, iy, size / 2, 1.12 * size, 0.42 * size, 0.25 * size)
        shirt = _rgb(avatar.shirt) * (0.92 + 0.08 * _below(iy, 0.9 * size))[..., None] * 255
        # picture = (background·(1 - head alpha) + head) · (1 - shoulders) + shirt · shoulders
        #         = base + keep · head - covered · head alpha
        self._keep = (1 - shoulders)[..., None]
        self._covered = background * self._keep
        self._base = self._covered + shirt * shoulders[..., None]

        # what stays put under any head motion (erode by the motion bound + 1 pixel)
        crop = (slice(PAD, PAD + size), slice(PAD, PAD + size))
        margin = int(np.ceil(MAX_HEAD_SHIFT)) + 1  # the shift, and one pixel of bilinear reach
        plain_skin = head.visible["skin"] >= 0.99
        for box, *_ in self._eyes:  # eyes and mouth change from frame to frame
            plain_skin[box] = False
        plain_skin[self._mouth_box] = False
        still = shoulders < 0.01
        self.regions: dict[str, np.ndarray] = {
            "skin": _erode(plain_skin[crop] & still, margin),
            "hair": _erode((head.visible.get("hair", np.zeros_like(y)) >= 0.99)[crop] & still, margin),
            "background": _erode((head.alpha <= 0.01)[crop] & still, margin),
        }
        top, bottom = self._mouth_box[0].start - PAD, self._mouth_box[0].stop - PAD
        left, right = self._mouth_box[1].start - PAD, self._mouth_box[1].stop - PAD
        shift = int(np.ceil(MAX_HEAD_SHIFT))
        self.mouth_box = (
            max(0, top - shift),
            min(size, bottom + shift),
            max(0, left - shift),
            min(size, right + shift),
        )

    # --- per-frame drawing ----------------------------------------------------------------------------------
    def render(self, mouth: np.ndarray, blink: np.ndarray, head: np.ndarray) -> np.ndarray:
        """Frames ``[N, size, size, 3]`` uint8 RGB.

        ``mouth`` [N, 3]: openness 0..1, width factor (1 at rest) and rounding 0..1; ``blink`` [N]: eyelid
        closure 0..1; ``head`` [N, 2]: head offset (x, y) in pixels, each within ±MAX_HEAD_SHIFT.
        """
        n = mouth.shape[0]
        if np.abs(head).max(initial=0.0) > MAX_HEAD_SHIFT + 1e-6:
            raise ValueError(f"head offsets must stay within ±{MAX_HEAD_SHIFT} pixels")
        # 1. the changing patches, all frames at once: eyes with their lids, the mouth
        patches = []
        for box, open_rgb, outline, rows, lid_top, lid_travel in self._eyes:
            lid_edge = lid_top + lid_travel * blink[:, None, None]  # [N, 1, 1]
            lid = outline[None] * (1 - _below(rows[None], lid_edge))  # [N, h, w]
            lash = outline[None] * np.clip(1 - np.abs(rows[None] - lid_edge), 0, 1)
            lash = (lash * np.minimum(1, 4 * blink)[:, None, None])[..., None]
            patch = open_rgb[None] * (1 - lid[..., None]) + lid[..., None] * self._lid
            patches.append((box, patch * (1 - lash) + lash * (self._lid * 0.35)))
        patches.append((self._mouth_box, self._draw_mouth(self._head.rgb[self._mouth_box][None], mouth)))

        # 2. per frame: paste the patches into the head, move it, composite (in 0..255 units)
        layer = np.concatenate([self._head.rgb * 255, self._head.alpha[..., None]], axis=-1)  # [C, C, 4]
        frames = np.empty((n, self.size, self.size, 3), np.uint8)
        for i in range(n):
            for box, patch in patches:
                layer[(*box, slice(0, 3))] = patch[i] * 255
            moved = _shift(layer, float(head[i, 0]), float(head[i, 1]), self.size)  # [S, S, 4]
            picture = self._base + self._keep * moved[..., :3] - self._covered * moved[..., 3:]
            frames[i] = np.clip(picture, 0, 255) + 0.5  # truncation after +0.5 rounds
        return frames

    def reference_image(self) -> np.ndarray:
        """The avatar at rest: eyes open, mouth closed, head centred; ``[size, size, 3]`` uint8."""
        return self.render(np.array([[0.0, 1.0, 0.0]]), np.zeros(1), np.zeros((1, 2)))[0]

    def _draw_mouth(self, patch: np.ndarray, mouth: np.ndarray) -> np.ndarray:
        """Lips, cavity and upper teeth over the skin ``patch`` [N, h, w, 3] for ``mouth`` [N, 3]."""
        x, y = self._mouth_xy
        openness, width, rounding = (mouth[:, i, None, None] for i in range(3))  # [N, 1, 1]
        half_width = self._mouth_half_width * width * (1 - 0.3 * rounding)
        cavity_half = 0.35 + 0.5 * self._mouth_open_px * openness  # pixels; a thin crease when closed
        lip = self._lip_px * (1 + 0.3 * rounding)
        mx, my = self._mouth_x, self._mouth_y
        lips = _coverage(x, y, mx, my, half_width, cavity_half + lip)
        cavity = _coverage(x, y, mx, my, 0.86 * half_width, cavity_half)
        teeth = cavity * (1 - _below(y, my - cavity_half + np.minimum(0.45 * cavity_half, 0.05 * self._ry)))
        lip_colour = _rgb(self.avatar.lip) * np.where(y < my, 0.9, 1.0)[..., None]  # upper lip a shade darker
        for coverage, colour in ((lips, lip_colour), (cavity, CAVITY), (teeth, TEETH)):
            patch = patch * (1 - coverage[..., None]) + coverage[..., None] * colour
        return patch


def _rect(x: np.ndarray, y: np.ndarray, cx: float, cy: float, half_w: float, half_h: float) -> np.ndarray:
    """Coverage of an axis-aligned rectangle, soft over one pixel."""
    return np.clip(half_w - np.abs(x - cx) + 0.5, 0, 1) * np.clip(half_h - np.abs(y - cy) + 0.5, 0, 1)


def _bumpy(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Coverage of an ellipse with a wavy outline (curls)."""
    angle = np.arctan2(y - cy, x - cx)
    wave = 1 + 0.05 * np.sin(14 * angle)
    return _coverage(x, y, cx, cy, rx * wave, ry * wave)


def _box(cx: float, cy: float, half_w: float, half_h: float, limit: int) -> tuple[slice, slice]:
    """(rows, columns) slices of the pixels within half_w/half_h of a centre, clipped to [0, limit)."""
    rows = slice(max(0, int(np.floor(cy - half_h))), min(limit, int(np.ceil(cy + half_h))))
    cols = slice(max(0, int(np.floor(cx - half_w))), min(limit, int(np.ceil(cx + half_w))))
    return rows, cols


def _shift(layer: np.ndarray, dx: float, dy: float, size: int) -> np.ndarray:
    """The ``size``² window of a padded canvas [C, C, 4] with its content moved by (dx, dy) pixels (bilinear)."""
    ix, iy = math.floor(dx), math.floor(dy)
    fx, fy = np.float32(dx - ix), np.float32(dy - iy)
    top, left = PAD - iy, PAD - ix  # the window that moves content by (ix, iy)
    # output (r, c) = content at (r + top - fy, c + left - fx): blend with the row above / column to the left
    region = layer[top - 1 : top + size, left - 1 : left + size]  # [S + 1, S + 1, 4]
    across = region[:, 1:] * (1 - fx) + region[:, :-1] * fx if fx else region[:, 1:]
    return across[1:] * (1 - fy) + across[:-1] * fy if fy else across[1:]
