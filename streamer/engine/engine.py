"""The engine: one model and its decoders on one device, serving many sessions with continuous batching.

The scheduler runs on the event loop: every tick it lets sessions announce playback, collects every session
whose next chunk is due, and hands them to the compute process (`sonate.streamer.engine.compute`) as one batch — one
forward per Euler step for all of them. Model work never runs on the event loop, or even in its process, so
network pacing stays on time and the forward never waits for the GIL.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from sonate.models.checkpoint import load_checkpoint
from sonate.models.decoders import Codecs
from sonate.models.errors import SonateInputError
from sonate.models.sampler import Guidance, chunk_phonemes
from sonate.models.transformer import SonateModel
from sonate.streamer.engine.compute import ChunkRequest, ComputeProcess, ComputeSetup
from sonate.streamer.engine.session import Session
from sonate.streamer.engine.timing import KEPT_BATCHES, KEPT_BREAKDOWNS, KEPT_CHUNKS, ChunkTiming, FirstAudio, Recent
from sonate.streamer.media.playout import TICK

log = logging.getLogger(__name__)

MAX_INSTRUCTION_CHARS = 1000
SOURCES = ("model", "clapper")  # EngineConfig.source: what makes each chunk's media


class EngineFull(SonateInputError):
    """Every session slot is taken; try again later."""


class EngineFailed(RuntimeError):
    """The engine stopped serving because its scheduler or announcer failed; `Engine.failure` says why."""


@dataclass
class EngineConfig:
    """How the engine serves sessions.

    max_lead_chunks: how many chunks beyond the one playing a session keeps made while speaking (its next chunk
    is due below that; one more may ride on a batch that runs anyway; both must stay below the model's
    `max_rollback_chunks` so an interruption can roll back); idle_lead_chunks: the same when silent (speech
    that arrives cuts the idle media made ahead, so this costs new text no time: it is margin for busy
    moments); lookahead_timeout_s: how long a half-arrived word may hold a chunk back (seconds);
    first_unit_words: words in the first unit of text of an utterance given to G2P (fewer: speech starts sooner
    on text streamed word by word; more: one phrasing break fewer; later units hold up to 4); max_batch: the
    most sessions one batch makes a chunk for (None: every session due — continuous batching; 1: one session
    per forward, the most urgent first, as a baseline); threads: torch
    CPU threads of the compute process (None leaves torch's choice); source: "model" generates media,
    "clapper" replaces the model with A/V sync test media (a flash and a beep each second) on the same path.
    """

    max_sessions: int = 4
    max_lead_chunks: int = 3
    idle_lead_chunks: int = 2
    lookahead_timeout_s: float = 0.4
    first_unit_words: int = 2
    max_batch: int | None = None
    steps: int | None = None
    guidance: Guidance | None = None
    threads: int | None = 1
    source: str = "model"


@dataclass
class EngineMetrics:
    """Running figures for /metrics and benchmarks (seconds unless named otherwise)."""

    chunks: int = 0
    compute_seconds: float = 0.0
    media_seconds: float = 0.0
    ttfa_seconds: list[float] = field(default_factory=list)  # text → first speech played, last 1000
    closed_underruns: int = 0
    batch_timings: Recent[ChunkTiming] = field(default_factory=lambda: Recent(KEPT_BATCHES))  # one per batch
    first_audio: Recent[FirstAudio] = field(default_factory=lambda: Recent(KEPT_BREAKDOWNS))  # time to first audio
    chunk_log: deque[tuple[str, ChunkTiming]] = field(default_factory=lambda: deque(maxlen=KEPT_CHUNKS))

    def observe_batch(self, timing: ChunkTiming, media_seconds: float) -> None:
        """A batch of `timing.batch_size` chunks making `media_seconds` of media; its compute time is the round
        trip to the compute process."""
        self.chunks += timing.batch_size
        self.compute_seconds += timing.round_trip
        self.media_seconds += media_seconds
        self.batch_timings.append(timing)

    @property
    def batches(self) -> int:
        """Batches computed so far."""
        return self.batch_timings.total

    def batch_seconds(self, last: int) -> list[float]:
        """The compute time (s, round trip) of each of the last `last` batches still kept, oldest first."""
        return [timing.round_trip for timing in self.batch_timings.since(self.batch_timings.total - last)]

    def observe_ttfa(self, seconds: float) -> None:
        self.ttfa_seconds = [*self.ttfa_seconds[-999:], seconds]

    def observe_first_audio(self, breakdown: FirstAudio) -> None:
        self.first_audio.append(breakdown)

    @property
    def rtf(self) -> float:
        """Compute seconds per media second made so far."""
        return self.compute_seconds / self.media_seconds if self.media_seconds else 0.0


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
        self.cfg = model.cfg
        self.config = config or EngineConfig()
        if self.config.source not in SOURCES:
            raise SonateInputError(f"unknown media source {self.config.source!r}; choose one of {', '.join(SOURCES)}")
        if max(self.config.max_lead_chunks, self.config.idle_lead_chunks) >= self.cfg.max_rollback_chunks:
            raise ValueError(
                "the leads must stay below the model's max_rollback_chunks (an interruption rolls back "
                "to the chunk playing)"
            )
        if self.config.max_batch is not None and self.config.max_batch < 1:
            raise SonateInputError("max_batch must be at least 1 (or None: every session due)")
        guidance = self.config.guidance or Guidance.of(self.cfg)
        self._setup = ComputeSetup(model, codecs or Codecs.random(self.cfg), self.config.max_sessions, guidance,
                                   self.config.steps, self.config.threads, self.config.source)  # fmt: skip
        self.sessions: dict[str, Session] = {}
        self.metrics = EngineMetrics()
        self._free_slots = list(range(self.config.max_sessions))
        self._rollbacks: list[tuple[int, int]] = []  # (slot, chunk) to apply before the next batch
        self._wake = asyncio.Event()
        self._compute: ComputeProcess | None = None
        self._scheduler: asyncio.Task | None = None
        self._announcer: asyncio.Task | None = None
        self._failure: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the compute process and the scheduler; safe to call twice."""
        if self._scheduler is not None:
            return
        compute = ComputeProcess(self._setup)
        await compute.start()
        self._compute = compute
        self._scheduler = asyncio.create_task(self._supervise("scheduler", self._run), name="sonate-scheduler")
        self._announcer = asyncio.create_task(self._supervise("announcer", self._announce), name="sonate-announcer")

    async def stop(self) -> None:
        """Close every session, stop the scheduler and the announcer, then the compute process whatever they
        did (what they raised is logged); safe to call twice."""
        tasks = [task for task in (self._scheduler, self._announcer) if task is not None]
        self._scheduler = self._announcer = None
        try:
            for session in list(self.sessions.values()):
                await self.close_session(session)
            for task in tasks:
                task.cancel()
            for task, result in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
                if isinstance(result, Exception):
                    log.error("%s ended with an error", task.get_name(), exc_info=result)
        finally:
            compute, self._compute = self._compute, None
            if compute is not None:
                await compute.stop()

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
            await self._in_compute("open", slot, seed, voice, avatar, instruction)
        except BaseException:
            self._free_slots.append(slot)
            raise
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
        await self._in_compute("condition", session.slot, references[1], references[2], references[0])
        session.references = references

    async def close_session(self, session: Session, reason: str = "closed") -> None:
        """Free a session's slot and end its iterators, closed for `reason`; safe to call twice."""
        if self.sessions.pop(session.id, None) is None:
            return
        self.metrics.closed_underruns += session.playout.underruns
        session.finish(reason)
        self._rollbacks = [(slot, chunk) for slot, chunk in self._rollbacks if slot != session.slot]
        self._free_slots.append(session.slot)
        log.info("session %s closed: %s", session.id, reason)

    def request_rollback(self, session: Session, chunk: int) -> None:
        """Roll the session's cache back to `chunk` before its next chunk is made."""
        self._rollbacks.append((session.slot, chunk))
        self.wake()

    def wake(self) -> None:
        """Something changed (text arrived, a viewer joined): run the scheduler now."""
        self._wake.set()

    def batch_latency_bound(self) -> float:
        """Seconds within which a batch the scheduler starts now surely completes: the longest of the last 50
        batches, compute process round trip included (a whole chunk's duration until a few batches were timed).
        The scheduler never decides while a batch is in flight, so a chunk it makes due now is ready within it."""
        recent = self.metrics.batch_seconds(50)
        if len(recent) < 5:
            return self.cfg.chunk_seconds
        return max(recent)

    @property
    def failure(self) -> str | None:
        """Why the engine stopped serving (its scheduler or announcer failed); None while it is healthy."""
        return self._failure

    @property
    def compute_pid(self) -> int | None:
        """Process id of the compute process while the engine runs (for CPU accounting)."""
        return self._compute.pid if self._compute is not None else None

    @property
    def underruns(self) -> int:
        """Playout underruns of every session, open or closed."""
        return self.metrics.closed_underruns + sum(s.playout.underruns for s in self.sessions.values())

    # --- scheduling --------------------------------------------------------------------------------------------

    async def _supervise(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run the engine's long-lived task `name` (the scheduler, the announcer) until it is cancelled; if it
        fails, log it with its traceback and fail the engine: nothing would make or announce chunks any more."""
        try:
            await work()
        except Exception as exc:
            log.exception("the %s failed", name)
            await self._fail(f"the {name} failed: {type(exc).__name__}: {exc}")

    async def _fail(self, reason: str) -> None:
        """The engine can no longer serve: record why (`failure`), then fail every session (`engine_failed`)."""
        self._failure = self._failure or reason
        message = f"the engine failed and closed every session ({reason}); see the server log"
        for session in list(self.sessions.values()):
            await session.fail("engine_failed", message)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            due = self._due_sessions(time.monotonic())
            if not due:
                try:
                    async with asyncio.timeout(TICK):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            await self._make_chunks(due)

    def _due_sessions(self, now: float) -> list[Session]:
        """The sessions the next batch makes a chunk for: none unless one is due (within its lead); then every
        due one and, while the batch has room, those one chunk early, each group the least buffered first. The
        early ones ride on a forward that runs anyway: a batch of N costs far less than N batches of one, and it
        keeps the sessions in step so later batches fill too."""
        slack = {session: session.chunk_slack(now) for session in list(self.sessions.values())}
        if not any(k is not None and k >= 0 for k in slack.values()):
            return []
        candidates = [session for session, k in slack.items() if k is not None]
        candidates.sort(key=lambda s: (slack[s] < 0, s.generation_front - s.playout.position_seconds))
        return candidates[: self.config.max_batch]

    async def _announce(self) -> None:
        """Every tick, each session sends the playback events whose media has begun to play (batches in flight
        do not delay them). A session whose announcement fails is logged and fails alone (`session_failed`)."""
        while True:
            for session in list(self.sessions.values()):
                try:
                    session.announce_playback()
                except Exception:
                    log.exception("session %s: announcing its playback failed", session.id)
                    await session.fail(
                        "session_failed", "the engine failed on this session (see its log); open a new one"
                    )
            await asyncio.sleep(TICK)

    async def _make_chunks(self, due: list[Session]) -> None:
        cfg = self.cfg
        requests, epochs = [], []
        for session in due:
            start = session.next_chunk * cfg.chunk_seconds
            phonemes = chunk_phonemes(cfg, [session.speech], session.next_chunk, 1)
            span = session.speech.text_span(start, start + cfg.chunk_seconds)
            requests.append(ChunkRequest(session.slot, session.next_chunk, phonemes, span))
            epochs.append(session.epoch)
            session.next_chunk += 1
            session.speech.forget_before(session.playout.position_seconds - cfg.chunk_seconds)
        rollbacks, self._rollbacks = self._rollbacks, []
        sent_at = time.monotonic()
        chunks, compute = await self._in_compute("make", requests, rollbacks)
        received_at = time.monotonic()
        for session, epoch, chunk in zip(due, epochs, chunks, strict=True):
            session.deliver(chunk, epoch)
        delivered_at = time.monotonic()
        timings = [ChunkTiming(c.index, len(chunks), sent_at, compute, received_at, delivered_at) for c in chunks]
        for session, epoch, timing in zip(due, epochs, timings, strict=True):
            session.record_timing(timing, epoch)
            self.metrics.chunk_log.append((session.id, timing))
        self.metrics.observe_batch(timings[0], len(chunks) * cfg.chunk_seconds)  # its chunks share one timing

    async def _in_compute(self, method: str, *args: object) -> object:
        """Run `ChunkMaker.<method>` in the compute process."""
        self._check_started()
        assert self._compute is not None
        return await self._compute.call(method, *args)

    def _check_started(self) -> None:
        if self._failure is not None:
            raise EngineFailed(f"the engine stopped serving: {self._failure}")
        if self._compute is None:
            raise RuntimeError("the engine is not started: use `async with Engine(...)` or `await engine.start()`")
