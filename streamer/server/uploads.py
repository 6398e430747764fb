"""The routes of the voice and avatar uploads: store, list and delete the voices (reference clips) and avatars
(reference pictures) that sessions are opened with."""

from __future__ import annotations

import asyncio
import io
import logging

import av
import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from sonate.models.errors import SonateInputError
from sonate.models.media_io import load_audio, load_image
from sonate.streamer.media.playout import TICK
from sonate.streamer.server.auth import CallerKey, check_limit, require_key
from sonate.streamer.server.dependencies import AppConfig, AppEngine, AppRegistry, read_body
from sonate.streamer.server.errors import ApiError
from sonate.streamer.server.registry import Library, NotFound, StorageFull

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 40_000_000  # larger pictures are refused before they are decoded

router = APIRouter(dependencies=[Depends(require_key)])  # every route takes an API key (on a server with keys)


@router.post("/v1/voices", status_code=201)
async def upload_voice(
    request: Request, engine: AppEngine, registry: AppRegistry, config: AppConfig, key: CallerKey
) -> JSONResponse:
    """Store a voice clip (any audio PyAV decodes) of `min_voice_seconds` to `max_voice_seconds`; 201 with its id;
    429 when the API key has stored as many voices as it may."""
    owner = check_limit(key, "voices", registry.voices.owned_by, config.retry_after_s)
    sample_rate = engine.cfg.sample_rate
    body = await read_body(request, config.max_body_bytes)
    longest = config.max_voice_seconds + TICK  # decode a little past the limit to tell "too long"
    try:
        voice = await asyncio.get_running_loop().run_in_executor(
            None, lambda: load_audio(body, sample_rate, max_seconds=longest)
        )
    except SonateInputError as exc:
        raise ApiError(422, "invalid_audio", str(exc)) from None
    seconds = len(voice) / sample_rate
    if not config.min_voice_seconds <= seconds <= config.max_voice_seconds:
        limits = f"{config.min_voice_seconds:g} to {config.max_voice_seconds:g} s"
        what = "too short" if seconds < config.min_voice_seconds else "too long"
        raise ApiError(422, "invalid_audio", f"the clip is {what} ({seconds:.2f} s); send {limits} of speech")
    try:
        reference = registry.voices.add(voice, {"seconds": round(seconds, 3), "sample_rate": sample_rate}, owner)
    except StorageFull as exc:
        raise ApiError(507, "storage_full", str(exc)) from None
    log.info("voice %s stored (%.2f s)", reference.id, seconds)
    return JSONResponse({"voice_id": reference.id, "seconds": round(seconds, 3)}, status_code=201)


@router.post("/v1/avatars", status_code=201)
async def upload_avatar(
    request: Request, engine: AppEngine, registry: AppRegistry, config: AppConfig, key: CallerKey
) -> JSONResponse:
    """Store an avatar picture (any image PyAV decodes), resized to the model's square; 201 with its id; 429 when
    the API key has stored as many avatars as it may."""
    owner = check_limit(key, "avatars", registry.avatars.owned_by, config.retry_after_s)
    body = await read_body(request, config.max_body_bytes)
    size = engine.cfg.avatar_image_size
    try:
        avatar = await asyncio.get_running_loop().run_in_executor(None, _decode_avatar, body, size)
    except SonateInputError as exc:
        raise ApiError(422, "invalid_image", str(exc)) from None
    try:
        reference = registry.avatars.add(avatar, {"width": size, "height": size}, owner)
    except StorageFull as exc:
        raise ApiError(507, "storage_full", str(exc)) from None
    log.info("avatar %s stored", reference.id)
    return JSONResponse({"avatar_id": reference.id}, status_code=201)


@router.get("/v1/voices")
async def list_voices(registry: AppRegistry) -> dict:
    """The stored voices, the built-in one first."""
    return {"voices": registry.voices.describe()}


@router.get("/v1/avatars")
async def list_avatars(registry: AppRegistry) -> dict:
    """The stored avatars, the built-in one first."""
    return {"avatars": registry.avatars.describe()}


@router.delete("/v1/voices/{voice_id}", status_code=204)
async def delete_voice(voice_id: str, registry: AppRegistry) -> Response:
    """Forget an uploaded voice (the built-in one stays: 409)."""
    return _remove(registry.voices, voice_id)


@router.delete("/v1/avatars/{avatar_id}", status_code=204)
async def delete_avatar(avatar_id: str, registry: AppRegistry) -> Response:
    """Forget an uploaded avatar (the built-in one stays: 409)."""
    return _remove(registry.avatars, avatar_id)


def _remove(store: Library, reference_id: str) -> Response:
    try:
        store.remove(reference_id)
    except NotFound as exc:
        raise ApiError(404, exc.code, exc.message) from None
    except SonateInputError as exc:
        raise ApiError(409, "builtin_reference", str(exc)) from None
    return Response(status_code=204)


def _decode_avatar(body: bytes, size: int) -> np.ndarray:
    """`load_image`, after refusing pictures too large to decode safely (their header says how large)."""
    try:
        with av.open(io.BytesIO(body)) as container:
            streams = container.streams.video
            pixels = streams[0].codec_context.width * streams[0].codec_context.height if streams else 0
    except (av.FFmpegError, OSError, ValueError):
        pixels = 0  # load_image says what is wrong with it
    if pixels > MAX_IMAGE_PIXELS:
        raise SonateInputError(f"the picture has {pixels} pixels; send one of at most {MAX_IMAGE_PIXELS}")
    return load_image(body, size)
