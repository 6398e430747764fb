"""The engine's compute process: the model, its KV cache and both decoders, in a process of their own.

The scheduler on the event loop decides what to make; a `ChunkMaker` in a child process
(`python -m sonate.streamer.engine.compute`) makes it. They talk over the child's stdin and stdout in length-prefixed
pickles: the first message is the `ComputeSetup`, then each request is (method name, arguments) and each reply
(True, result) or (False, exception). Only the engine talks to it, one request at a time.

Why a process and not a thread: a chunk is hundreds of small torch ops, and between them the forward needs the
GIL back. Beside the event loop, the websocket and the WebRTC encoders, a compute *thread* made a chunk of the
default model in 157 ms (p50) where the same chunk alone takes 120 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import struct
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch

from sonate.models.audio_codec import VocoderState
from sonate.models.decoders import Codecs
from sonate.models.phases import Laps
from sonate.models.sampler import ChunkStream, Guidance
from sonate.models.transformer import ChunkPhonemes, SonateModel
from sonate.streamer.engine.reference_media import session_conditioning
from sonate.streamer.engine.timing import ComputeTiming
from sonate.streamer.media.chunk import AVChunk
from sonate.streamer.media.clapper import clapper_media

log = logging.getLogger(__name__)

LENGTH = struct.Struct("<Q")  # bytes of the pickle that follows
STOP_TIMEOUT_S = 5.0  # seconds the child gets to exit after its stdin closes, before it is killed


@dataclass
class ComputeSetup:
    """What the compute process is built from: the model and codecs, `capacity` session slots, the sampler's
    guidance and Euler steps (None: the model's), torch CPU threads (None: torch's choice), and the media source
    ("model", or "clapper" for A/V sync test media that never touches the model)."""

    model: SonateModel
    codecs: Codecs
    capacity: int
    guidance: Guidance
    steps: int | None
    threads: int | None
    source: str


@dataclass
class ChunkRequest:
    """One session's next chunk: its slot, its index on the session's timeline, its phonemes and the span of
    session text it speaks ((-1, -1) when silent)."""

    slot: int
    chunk: int
    phonemes: ChunkPhonemes
    text_span: tuple[int, int]


class ChunkMaker:
    """Makes chunks for the engine's session slots: conditioning, batched generation against the shared KV
    cache, and both decoders with each slot's carried vocoder state."""

    def __init__(self, setup: ComputeSetup) -> None:
        if setup.threads is not None:
            torch.set_num_threads(setup.threads)
        self.setup = setup
        self.cfg = setup.model.cfg
        self.codecs = setup.codecs
        self.stream = ChunkStream(setup.model, setup.capacity, setup.guidance, setup.steps)
        self.vocoder_states: dict[int, dict[int, VocoderState]] = {}  # slot → chunk → state after it

    def open(self, slot: int, seed: int, voice: np.ndarray | None, avatar: np.ndarray | None, instruction: str) -> None:
        """Start `slot` afresh for a new session (voice: float32 samples at the model's rate, avatar: RGB uint8)."""
        cond = session_conditioning(self.setup.model, self.codecs, voice, avatar, instruction)
        self.stream.open([slot], cond, [seed])
        self.vocoder_states[slot] = {-1: self.codecs.vocoder.init_state(1)}

    def condition(self, slot: int, voice: np.ndarray | None, avatar: np.ndarray | None, instruction: str) -> None:
        """Recompute `slot`'s prefix from new references; its chunks so far stay in the cache."""
        cond = session_conditioning(self.setup.model, self.codecs, voice, avatar, instruction)
        self.stream.condition([slot], cond)

    @torch.no_grad()
    def make(
        self, requests: list[ChunkRequest], rollbacks: list[tuple[int, int]]
    ) -> tuple[list[AVChunk], ComputeTiming]:
        """Apply the (slot, chunk) rollbacks, then make every request's chunk in one batch and decode it;
        returns the chunks and how long each part took."""
        started_at = time.monotonic()
        if self.setup.source == "clapper":
            chunks = [self._clapper_chunk(request) for request in requests]
            return chunks, ComputeTiming(started_at, time.monotonic())
        for slot, chunk in rollbacks:
            self.stream.rollback(chunk, [slot])
        for request in requests:
            assert self.stream.chunk_index(request.slot) == request.chunk, "session and cache disagree"
        phonemes = ChunkPhonemes.cat([r.phonemes for r in requests])
        laps = Laps()  # the seconds of each of COMPUTE_SPANS
        audio_latents, video_latents = self.stream.generate(phonemes, [r.slot for r in requests], timer=laps)
        states = [self._vocoder_state(r.slot, r.chunk - 1) for r in requests]
        audio, frames, states = self.codecs.decode_chunk(audio_latents, video_latents, states, timer=laps)
        for request, state in zip(requests, states, strict=True):
            self._keep_vocoder_state(request.slot, request.chunk, state)
        chunks = [self._chunk(r, audio[i].numpy(), frames[i].numpy()) for i, r in enumerate(requests)]
        return chunks, ComputeTiming(started_at, time.monotonic(), **laps.seconds)

    def _vocoder_state(self, slot: int, chunk: int) -> VocoderState:
        """`slot`'s vocoder state after `chunk`; a fresh one where none is kept (before chunk 0)."""
        return self.vocoder_states[slot].get(chunk, self.codecs.vocoder.init_state(1))

    def _keep_vocoder_state(self, slot: int, chunk: int, state: VocoderState) -> None:
        """Keep `slot`'s state after `chunk`, and forget those no rollback can return to."""
        states = self.vocoder_states[slot]
        states[chunk] = state
        for old in [c for c in states if c < chunk - self.cfg.max_rollback_chunks - 1]:
            del states[old]

    def _clapper_chunk(self, request: ChunkRequest) -> AVChunk:
        """The clapper's media for a request, in place of the model's (the model's cache is never touched)."""
        cfg = self.cfg
        audio, frames = clapper_media(request.chunk * cfg.chunk_audio_samples, cfg.chunk_audio_samples,
                                      cfg.sample_rate, cfg.video_fps, cfg.video_width, cfg.video_height)  # fmt: skip
        return self._chunk(request, audio, frames)

    def _chunk(self, request: ChunkRequest, audio: np.ndarray, frames: np.ndarray) -> AVChunk:
        cfg = self.cfg
        return AVChunk(request.chunk, request.chunk * cfg.chunk_seconds, audio, frames, cfg.sample_rate,
                       cfg.video_fps, *request.text_span)  # fmt: skip


class ComputeProcess:
    """A `ChunkMaker` in a child process; `await call("make", requests, rollbacks)` runs a method there.

    Calls are serialised (one request in flight), and a cancelled call still has its reply read, so requests
    and replies never fall out of step. If the child dies, every later call raises RuntimeError.
    """

    def __init__(self, setup: ComputeSetup) -> None:
        self.setup = setup
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._unread: asyncio.Task | None = None  # a request whose caller was cancelled before its reply came

    async def start(self) -> None:
        """Start the child and build its `ChunkMaker`; returns once it is ready."""
        pipe = asyncio.subprocess.PIPE
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sonate.streamer.engine.compute", stdin=pipe, stdout=pipe
        )
        try:
            await self._exchange(self.setup)
        except BaseException:
            await self.stop()
            raise

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None else None

    async def call(self, method: str, *args: Any) -> Any:
        """Run `ChunkMaker.<method>(*args)` in the child and return its result (or raise its exception)."""
        ok, result = await self._exchange((method, args))
        if not ok:
            raise result
        return result

    async def stop(self) -> None:
        """Close the child's stdin and wait for it to exit (killing it after a timeout); safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("the compute process did not exit: killing it")
            process.kill()
            await process.wait()
        if self._unread is not None:
            with contextlib.suppress(Exception):
                await self._unread

    async def _exchange(self, message: object) -> Any:
        async with self._lock:
            if self._unread is not None:  # the reply a cancelled caller left: read it, so replies stay in step
                with contextlib.suppress(Exception):
                    await self._unread
                self._unread = None
            process = self._process
            if process is None:
                raise RuntimeError("the compute process is not running")
            payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            roundtrip = asyncio.create_task(_roundtrip(process, payload), name="sonate-compute-roundtrip")
            self._unread = roundtrip
            reply = await asyncio.shield(roundtrip)  # cancelled here, the reply is still read (next time)
            self._unread = None
            return reply


async def _roundtrip(process: asyncio.subprocess.Process, payload: bytes) -> Any:
    """Send one request to the child and read its reply."""
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(LENGTH.pack(len(payload)) + payload)
        await process.stdin.drain()
        (length,) = LENGTH.unpack(await process.stdout.readexactly(LENGTH.size))
        return pickle.loads(await process.stdout.readexactly(length))
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        raise RuntimeError(f"the compute process died (exit code {process.returncode})") from exc


def _read(stream: IO[bytes]) -> Any:
    """The next message on `stream`, or None at its end."""
    header = stream.read(LENGTH.size)
    if len(header) < LENGTH.size:
        return None
    (length,) = LENGTH.unpack(header)
    return pickle.loads(stream.read(length))


def _write(stream: IO[bytes], message: object) -> None:
    try:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an exception that does not pickle still reaches the engine, as text
        payload = pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    stream.write(LENGTH.pack(len(payload)) + payload)
    stream.flush()


def main() -> None:
    """The child's loop: build the ChunkMaker from the first message, then answer requests until stdin ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes our stdin
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the replies
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s (compute process): %(message)s")
    maker = ChunkMaker(_read(requests))
    _write(replies, (True, None))
    while (request := _read(requests)) is not None:
        method, args = request
        try:
            reply = (True, getattr(maker, method)(*args))
        except Exception as exc:
            log.debug("%s failed", method, exc_info=True)
            reply = (False, exc)
        _write(replies, reply)


if __name__ == "__main__":
    main()
