"""The compute process: a real child process, its replies kept in step, its errors and its death reported."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from sonate.models.checkpoint import random_model
from sonate.models.decoders import Codecs
from sonate.models.sampler import Guidance, chunk_phonemes
from sonate.streamer.engine.compute import ChunkRequest, ComputeProcess, ComputeSetup
from tests.conftest import small_config


class Silence:
    """A phoneme source that is silent everywhere."""

    def sample(self, times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(times_s), np.int64), np.zeros(len(times_s), np.int64)


@pytest.fixture
async def compute():
    cfg = small_config(n_layers=1)
    process = ComputeProcess(ComputeSetup(random_model(cfg), Codecs.random(cfg), 2, Guidance(), None, 1, "model"))
    await process.start()
    await process.call("open", 0, 7, None, None, "")
    yield process, cfg
    await process.stop()
    await process.stop()  # twice is fine


def request(cfg, chunk: int) -> ChunkRequest:
    return ChunkRequest(0, chunk, chunk_phonemes(cfg, [Silence()], chunk, 1), (-1, -1))


async def test_a_cancelled_call_still_has_its_reply_read(compute) -> None:
    process, cfg = compute
    cancelled = asyncio.create_task(process.call("make", [request(cfg, 0)], []))
    await asyncio.sleep(0.001)  # the request is on its way
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    (chunk,), _ = await process.call("make", [request(cfg, 1)], [])  # chunk 0 was made all the same
    assert chunk.index == 1 and chunk.pts == pytest.approx(cfg.chunk_seconds)
    assert chunk.audio.shape == (cfg.chunk_audio_samples,)
    assert chunk.frames.shape == (cfg.chunk_video_frames, cfg.video_height, cfg.video_width, 3)


async def test_an_error_in_the_child_reaches_the_caller_and_the_child_carries_on(compute) -> None:
    process, cfg = compute
    with pytest.raises(AssertionError, match="disagree"):
        await process.call("make", [request(cfg, 5)], [])  # the cache is at chunk 0
    with pytest.raises(AttributeError):
        await process.call("no_such_method")
    (chunk,), _ = await process.call("make", [request(cfg, 0)], [])
    assert chunk.index == 0


async def test_a_dead_child_is_reported(compute) -> None:
    process, cfg = compute
    os.kill(process.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="died"):
        await process.call("make", [request(cfg, 0)], [])
