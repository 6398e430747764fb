"""The engine: one model and its decoders on one device, serving many sessions with continuous batching.

The scheduler runs on the event loop: every tick it lets sessions announce playback, collects every session
whose next chunk is due, and hands them to the compute thread as one batch — one forward per Euler step for all
of them. Model work never runs on the event loop, so network pacing stays on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from sonate.models.audio_codec import VocoderState
from sonate.models.checkpoint import load_checkpoint
from sonate.models.decoders import Codecs
from sonate.models.errors import SonateInputError
from sonate.models.sampler import ChunkStream, Guidance, chunk_phonemes
from sonate.models.transformer import ChunkPhonemes, SonateModel
from sonate.streamer.clapper import clapper_media
from sonate.streamer.playout import TICK, AVChunk
from sonate.streamer.references import session_conditioning
from sonate.streamer.session import Session

log = logging.getLogger(__name__)

MAX_INSTRUCTION_CHARS = 1000
SOURCES = ("model", "clapper")  # EngineConfig.source: what makes each chunk's media


class EngineFull(SonateInputError):
    """Every session slot is taken; try again later."""


@dataclass
class EngineConfig:
    """How the engine serves sessions.

    max_lead_chunks: how far generation may run ahead of playback while speaking (must stay within the model's
    `max_rollback_chunks` so an interruption can roll back); idle_lead_chunks: the same when silent (small, so new
    text starts soon); lookahead_timeout_s: how long a half-arrived word may hold a chunk back (seconds);
    threads: torch CPU threads for the compute thread (None leaves torch's choice); source: "model" generates
    media, "clapper" replaces the model with A/V sync test media (a flash and a beep each second) on the same path.
    """

    max_sessions: int = 4
    max_lead_chunks: int = 3
    idle_lead_chunks: int = 1
    lookahead_timeout_s: float = 0.4
    steps: int | None = None
    guidance: Guidance | None = None
    threads: int | None = 1
    source: str = "model"


@dataclass
class EngineMetrics:
    """Running figures for /metrics and benchmarks (seconds unless named otherwise)."""

    chunks: int = 0
    batches: int = 0
    compute_seconds: float = 0.0
    media_seconds: float = 0.0
    chunk_seconds: list[float] = field(default_factory=list)  # compute time per batch, last 1000
    ttfa_seconds: list[float] = field(default_factory=list)  # text → first speech played, last 1000
    closed_underruns: int = 0

    def observe_batch(self, seconds: float, chunks: int, media_seconds: float) -> None:
        self.batches += 1
        self.chunks += chunks
        self.compute_seconds += seconds
        self.media_seconds += media_seconds
        self.chunk_seconds = [*self.chunk_seconds[-999:], seconds]

    def observe_ttfa(self, seconds: float) -> None:
        self.ttfa_seconds = [*self.ttfa_seconds[-999:], seconds]

    @property
    def rtf(self) -> float:
        """Compute seconds per media second made so far."""
        return self.compute_seconds / self.media_seconds if self.media_seconds else 0.0


@dataclass
class ChunkJob:
    """One session's next chunk, as scheduled: what to make, for which epoch, with which phonemes."""

    session: Session
    chunk: int
    epoch: int
    phonemes: ChunkPhonemes
    text_span: tuple[int, int]


class Engine:
    """Owns the model, the decoders and every session; `open_session` is the entry point.

    Without a model it serves the embedded default checkpoint; a model given without codecs gets seeded
    random ones (for speed work and tests).
    """

    def __init__(
        self, model: SonateModel | None = None, config: EngineConfig | None = None, codecs: Codecs | None = None
    ) -> None:
        if model is None:
            default = load_checkpoint(None)
            model, codecs = default.model, default.codecs
        self.model = model
        self.cfg = self.model.cfg
        self.codecs = codecs or Codecs.random(self.cfg)
        self.config = config or EngineConfig()
        if self.config.source not in SOURCES:
            raise SonateInputError(f"unknown media source {self.config.source!r}; choose one of {', '.join(SOURCES)}")
        if self.config.max_lead_chunks > self.cfg.max_rollback_chunks:
            raise ValueError("max_lead_chunks must not exceed the model's max_rollback_chunks")
        guidance = self.config.guidance or Guidance(self.cfg.audio_guidance, self.cfg.video_guidance)
        self.stream = ChunkStream(self.model, self.config.max_sessions, guidance, self.config.steps)
        self.sessions: dict[str, Session] = {}
        self.metrics = EngineMetrics()
        self._free_slots = list(range(self.config.max_sessions))
        self._decoder_states: dict[int, dict[int, VocoderState]] = {}  # slot → chunk → state after it
        self._rollbacks: list[tuple[int, int]] = []  # (slot, chunk) to apply before the next batch
        self._wake = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._scheduler: asyncio.Task | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the compute thread and the scheduler; safe to call twice."""
        if self._scheduler is not None:
            return
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonate-compute")
        self._scheduler = asyncio.create_task(self._run(), name="sonate-scheduler")

    async def stop(self) -> None:
        """Close every session, stop the scheduler and the compute thread; safe to call twice."""
        for session in list(self.sessions.values()):
            await self.close_session(session)
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
            self._scheduler = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- sessions ----------------------------------------------------------------------------------------------

    async def open_session(
        self,
        *,
        voice: np.ndarray | None = None,
        avatar: np.ndarray | None = None,
        instruction: str = "",
        seed: int | None = None,
    ) -> Session:
        """A new session speaking with `voice` (float32 [samples] at the model's rate), looking like `avatar`
        (uint8 [H, W, 3]) as `instruction` describes; raises EngineFull when every slot is taken."""
        self._check_started()
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise SonateInputError(f"the instruction may hold at most {MAX_INSTRUCTION_CHARS} characters")
        if not self._free_slots:
            raise EngineFull(f"all {self.config.max_sessions} sessions are in use")
        slot = self._free_slots.pop(0)
        session = Session(self, uuid.uuid4().hex[:16], slot)
        seed = int.from_bytes(uuid.uuid4().bytes[:4], "little") if seed is None else seed
        try:
            cond = session_conditioning(self.model, self.codecs, voice, avatar, instruction)
            await self._in_compute(self.stream.open, [slot], cond, [seed])
        except BaseException:
            self._free_slots.append(slot)
            raise
        self._decoder_states[slot] = {-1: self.codecs.vocoder.init_state(1)}
        session.references = (instruction, voice, avatar)
        self.sessions[session.id] = session
        log.info("session %s opened in slot %d", session.id, slot)
        return session

    async def update_conditioning(
        self, session: Session, *, instruction: str | None, voice: np.ndarray | None, avatar: np.ndarray | None
    ) -> None:
        """Recompute a session's prefix from new references; its chunks so far stay in the cache."""
        if instruction is not None and len(instruction) > MAX_INSTRUCTION_CHARS:
            raise SonateInputError(f"the instruction may hold at most {MAX_INSTRUCTION_CHARS} characters")
        previous = session.references
        references = (
            previous[0] if instruction is None else instruction,
            previous[1] if voice is None else voice,
            previous[2] if avatar is None else avatar,
        )
        cond = session_conditioning(self.model, self.codecs, references[1], references[2], references[0])
        await self._in_compute(self.stream.condition, [session.slot], cond)
        session.references = references

    async def close_session(self, session: Session) -> None:
        """Free a session's slot and end its iterators; safe to call twice."""
        if self.sessions.pop(session.id, None) is None:
            return
        self.metrics.closed_underruns += session.playout.underruns
        session.finish()
        self._decoder_states.pop(session.slot, None)
        self._rollbacks = [(slot, chunk) for slot, chunk in self._rollbacks if slot != session.slot]
        self._free_slots.append(session.slot)
        log.info("session %s closed", session.id)

    def request_rollback(self, session: Session, chunk: int) -> None:
        """Roll the session's cache back to `chunk` before its next chunk is made."""
        self._rollbacks.append((session.slot, chunk))
        self.wake()

    def wake(self) -> None:
        """Something changed (text arrived, a viewer joined): run the scheduler now."""
        self._wake.set()

    def safe_chunk_latency(self) -> float:
        """Seconds within which a chunk batch surely completes: twice the p90 of recent batches plus a tick
        (a whole chunk's duration until a few batches were timed)."""
        recent = self.metrics.chunk_seconds[-50:]
        if len(recent) < 5:
            return self.cfg.chunk_seconds
        return 2 * float(np.percentile(recent, 90)) + TICK

    @property
    def underruns(self) -> int:
        """Playout underruns of every session, open or closed."""
        return self.metrics.closed_underruns + sum(s.playout.underruns for s in self.sessions.values())

    # --- scheduling --------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                now = time.monotonic()
                for session in list(self.sessions.values()):
                    session.announce_playback()
                due = [s for s in self.sessions.values() if s.wants_chunk(now)]
                if not due:
                    try:
                        async with asyncio.timeout(TICK):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                await self._make_chunks(due)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the scheduler stopped")
            raise

    async def _make_chunks(self, due: list[Session]) -> None:
        cfg = self.cfg
        jobs = []
        for session in due:
            start = session.next_chunk * cfg.chunk_seconds
            phonemes = chunk_phonemes(cfg, [session.speech], session.next_chunk, 1)
            span = session.speech.text_span(start, start + cfg.chunk_seconds)
            jobs.append(ChunkJob(session, session.next_chunk, session.epoch, phonemes, span))
            session.next_chunk += 1
            session.speech.forget_before(session.playout.position_seconds - cfg.chunk_seconds)
        rollbacks, self._rollbacks = self._rollbacks, []
        started = time.perf_counter()
        chunks = await self._in_compute(self._compute, jobs, rollbacks)
        self.metrics.observe_batch(time.perf_counter() - started, len(jobs), len(jobs) * cfg.chunk_seconds)
        for job, chunk in zip(jobs, chunks, strict=True):
            job.session.deliver(chunk, job.epoch)

    def _compute(self, jobs: list[ChunkJob], rollbacks: list[tuple[int, int]]) -> list[AVChunk]:
        """Runs in the compute thread: apply rollbacks, make every job's chunk in one batch, decode."""
        cfg = self.cfg
        if self.config.source == "clapper":
            return [self._clapper_chunk(job) for job in jobs]
        for slot, chunk in rollbacks:
            if slot in self._decoder_states:
                self.stream.rollback(chunk, [slot])
        slots = [job.session.slot for job in jobs]
        for job in jobs:
            assert self.stream.chunk_index(job.session.slot) == job.chunk, "session and cache disagree"
        audio_latents, video_latents = self.stream.generate(ChunkPhonemes.cat([j.phonemes for j in jobs]), slots)
        frames = self.codecs.video_decoder.decode(video_latents).numpy()
        chunks = []
        for i, job in enumerate(jobs):
            states = self._decoder_states.get(job.session.slot, {})
            state = states.get(job.chunk - 1, self.codecs.vocoder.init_state(1))
            audio, states[job.chunk] = self.codecs.vocoder.decode(audio_latents[i : i + 1], state)
            for old in [c for c in states if c < job.chunk - cfg.max_rollback_chunks - 1]:
                del states[old]
            chunks.append(
                AVChunk(job.chunk, job.chunk * cfg.chunk_seconds, audio[0].numpy(), frames[i], cfg.sample_rate,
                        cfg.video_fps, *job.text_span)
            )  # fmt: skip
        return chunks

    def _clapper_chunk(self, job: ChunkJob) -> AVChunk:
        """The clapper's media for a job, in place of the model's (the model's cache is never touched)."""
        cfg = self.cfg
        first_sample = job.chunk * cfg.chunk_audio_samples
        audio, frames = clapper_media(
            first_sample, cfg.chunk_audio_samples, cfg.sample_rate, cfg.video_fps, cfg.video_width, cfg.video_height
        )
        return AVChunk(job.chunk, job.chunk * cfg.chunk_seconds, audio, frames, cfg.sample_rate, cfg.video_fps,
                       *job.text_span)  # fmt: skip

    async def _in_compute(self, fn, *args):
        self._check_started()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _check_started(self) -> None:
        if self._executor is None:
            raise RuntimeError("the engine is not started: use `async with Engine(...)` or `await engine.start()`")
