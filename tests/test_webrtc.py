"""WebRTC transport: real aiortc peers on loopback, fed in real time with the clapper, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from av import AudioFrame, VideoFrame

from sonate.models.errors import SonateInputError
from sonate.streamer.media.chunk import AVChunk
from sonate.streamer.media.clapper import av_offsets, beep_times, clapper_media, flash_times
from sonate.streamer.media.playout import TICK, Playout
from sonate.streamer.server.webrtc import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_RATE,
    PlayoutAudioTrack,
    PlayoutVideoTrack,
    StreamingResampler,
    ViewerStart,
    WebRTCViewers,
)

SAMPLE_RATE = 16000  # Hz, the tiny model's rate
FPS = 25
SIZE = 64  # pixels, width and height
CHUNK_SECONDS = 0.32  # 8 video frames
CHUNK_SAMPLES = round(CHUNK_SECONDS * SAMPLE_RATE)
LEAD_CHUNKS = 2  # the feeder keeps this much media buffered ahead of playback
FEED_POLL = 0.020  # seconds between the feeder's looks at the playout
FRAME_SECONDS = 1 / FPS  # 40 ms: the A/V tolerance
NO_ICE_SERVERS = RTCConfiguration(iceServers=[])  # loopback: host candidates only, no STUN round trip


def clapper_chunk(index: int) -> AVChunk:
    audio, frames = clapper_media(index * CHUNK_SAMPLES, CHUNK_SAMPLES, SAMPLE_RATE, FPS, SIZE, SIZE)
    return AVChunk(index, index * CHUNK_SECONDS, audio, frames, SAMPLE_RATE, FPS)


class Feeder:
    """Pushes clapper chunks as playback needs them, keeping `LEAD_CHUNKS` buffered, like a real-time generator.

    With `pause_after` set, it stops after that many chunks, lets the playout run dry, keeps it held for
    `pause_s` seconds, then resumes.
    """

    def __init__(self, playout: Playout, pause_after: int | None = None, pause_s: float = 0.6) -> None:
        self.playout, self.pause_after, self.pause_s = playout, pause_after, pause_s
        self.pushed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        lead_ticks = round(LEAD_CHUNKS * CHUNK_SECONDS / TICK)
        while True:
            self.playout.advance()
            if self.pushed == self.pause_after:
                while self.playout.holds == 0:
                    await asyncio.sleep(FEED_POLL)
                    self.playout.advance()
                await asyncio.sleep(self.pause_s)
                self.pause_after = None
                self.playout.advance()
            while self.playout.start_time is None or self.playout.buffered_until - self.playout.position < lead_ticks:
                self.playout.push(clapper_chunk(self.pushed))
                self.pushed += 1
                if self.pushed == self.pause_after:
                    break
            await asyncio.sleep(FEED_POLL)


async def connect_viewer(viewers: WebRTCViewers, playout: Playout) -> tuple[RTCPeerConnection, str]:
    """A receiving peer offering recvonly audio and video, answered by `viewers` and connected."""
    pc = RTCPeerConnection(NO_ICE_SERVERS)
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    answer_sdp, viewer_id = await viewers.answer(pc.localDescription.sdp, playout, "session")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
    async with asyncio.timeout(10):
        while pc.connectionState != "connected":
            await asyncio.sleep(0.01)
    return pc, viewer_id


def remote_track(pc: RTCPeerConnection, kind: str) -> MediaStreamTrack:
    return next(t.receiver.track for t in pc.getTransceivers() if t.kind == kind)


async def record(track: MediaStreamTrack, seconds: float) -> list[AudioFrame | VideoFrame]:
    """Frames from `track` until `seconds` of media (by pts) have arrived."""
    frames: list[AudioFrame | VideoFrame] = []
    async with asyncio.timeout(seconds + 5):
        while not frames or (frames[-1].pts - frames[0].pts) * frames[0].time_base < seconds:
            frames.append(await track.recv())
    return frames


async def watch_clapper(seconds: float, pause_after: int | None = None) -> tuple[list, list, Playout]:
    """Stream the clapper to one WebRTC viewer for `seconds`; returns (audio frames, video frames, playout)."""
    playout = Playout(SAMPLE_RATE, FPS, SIZE, SIZE)
    viewers = WebRTCViewers()
    feeder = Feeder(playout, pause_after=pause_after)
    pc, _ = await connect_viewer(viewers, playout)
    try:
        feeder.start()  # the first chunk starts the clock: both tracks start together
        audio, video = await asyncio.gather(
            record(remote_track(pc, "audio"), seconds), record(remote_track(pc, "video"), seconds)
        )
    finally:
        await feeder.stop()
        await pc.close()
        await viewers.close_all()
    return audio, video, playout


def measure_offsets(audio: list[AudioFrame], video: list[VideoFrame]) -> tuple[list[float], list[float], list[float]]:
    """(flash times, beep times, offsets) in seconds of received pts."""
    flashes = flash_times((float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in video)
    pcm = np.concatenate([f.to_ndarray()[0, :: len(f.layout.channels)] for f in audio]).astype(np.float32) / 32768
    beeps = beep_times(pcm, audio[0].sample_rate, float(audio[0].pts * audio[0].time_base))
    return flashes, beeps, av_offsets(flashes, beeps)


def assert_continuous(audio: list[AudioFrame]) -> None:
    """48 kHz, 960 samples a frame, pts stepping by exactly 960: no gap, no overlap."""
    assert {f.sample_rate for f in audio} == {AUDIO_RATE}
    assert {f.samples for f in audio} == {AUDIO_FRAME_SAMPLES}
    steps = np.diff([f.pts for f in audio])
    assert (steps == AUDIO_FRAME_SAMPLES).all(), f"pts steps {sorted(set(steps.tolist()))}"


# --- fast: pieces in isolation ---------------------------------------------------------------------------------


def test_clapper_claps_line_up() -> None:
    audio, frames = clapper_media(0, 2 * SAMPLE_RATE, SAMPLE_RATE, FPS, 8, 8)
    assert audio.shape == (2 * SAMPLE_RATE,) and frames.shape == (2 * FPS, 8, 8, 3)
    flashes = flash_times((i / FPS, frame) for i, frame in enumerate(frames))
    beeps = beep_times(audio, SAMPLE_RATE, 0.0)
    assert flashes == pytest.approx([0.52, 1.52])
    assert beeps == pytest.approx([0.52, 1.52], abs=0.002)
    # a span cut anywhere on frame boundaries is the same media
    tail_audio, tail_frames = clapper_media(10 * 640, 30 * 640, SAMPLE_RATE, FPS, 8, 8)
    np.testing.assert_array_equal(tail_audio, audio[10 * 640 : 40 * 640])
    np.testing.assert_array_equal(tail_frames, frames[10:40])
    with pytest.raises(ValueError, match="whole video frames"):
        clapper_media(100, 640, SAMPLE_RATE, FPS, 8, 8)


@pytest.mark.parametrize("rate_in", [16000, 24000, 44100])
def test_resampler_is_continuous_across_blocks(rate_in: int) -> None:
    block = round(rate_in * TICK)
    resampler = StreamingResampler(rate_in, AUDIO_RATE, block)
    t_in = np.arange(50 * block) / rate_in
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t_in)).astype(np.float32)
    out = np.concatenate([resampler.process(tone[i : i + block]) for i in range(0, len(tone), block)])
    assert len(out) == 50 * AUDIO_FRAME_SAMPLES
    t_out = np.arange(len(out)) / AUDIO_RATE - resampler.delay_seconds
    expected = 0.5 * np.sin(2 * np.pi * 1000 * t_out)
    settled = AUDIO_FRAME_SAMPLES  # past the first block's filter warm-up
    assert np.abs(out - expected)[settled:].max() < 1e-3


async def test_tracks_start_together_at_the_current_frame() -> None:
    """A late viewer starts at the frame on screen now; frame n carries tick first + n; past due means no wait."""
    now = [100.0]
    playout = Playout(SAMPLE_RATE, FPS, SIZE, SIZE, clock=lambda: now[0])
    for index in range(4):
        playout.push(clapper_chunk(index))
    now[0] += 0.51  # tick 25 is playing; its video frame began at tick 24
    start = ViewerStart()
    audio_track, video_track = PlayoutAudioTrack(playout, start), PlayoutVideoTrack(playout, start)
    audio = [await audio_track.recv() for _ in range(4)]
    video = [await video_track.recv() for _ in range(2)]
    assert [f.pts for f in audio] == [t * AUDIO_FRAME_SAMPLES for t in range(24, 28)]
    assert [f.pts * f.time_base for f in video] == [pytest.approx(t * TICK) for t in (24, 26)]
    # tick 26 (0.52 s) is the clap: white frame, and the beep begins there (after the resampler's ~1 ms)
    assert video[0].to_ndarray(format="rgb24").mean() == 0 and video[1].to_ndarray(format="rgb24").mean() == 255
    pcm = np.concatenate([f.to_ndarray()[0] for f in audio]).astype(np.float32) / 32768
    assert beep_times(pcm, AUDIO_RATE, 24 * TICK) == pytest.approx([0.52], abs=0.003)
    audio_track.stop()
    video_track.stop()


async def test_bad_offers_are_input_errors() -> None:
    playout = Playout(SAMPLE_RATE, FPS, SIZE, SIZE)
    viewers = WebRTCViewers()
    with pytest.raises(SonateInputError, match="no audio or video"):
        await viewers.answer("this is not SDP", playout, "session")
    with pytest.raises(SonateInputError, match="not valid SDP"):
        await viewers.answer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:bad\r\n", playout, "session")
    sender = RTCPeerConnection(NO_ICE_SERVERS)  # offers to send only: nothing for the viewer to receive
    sender.addTransceiver("audio", direction="sendonly")
    await sender.setLocalDescription(await sender.createOffer())
    with pytest.raises(SonateInputError, match="no audio or video"):
        await viewers.answer(sender.localDescription.sdp, playout, "session")
    no_ice = sender.localDescription.sdp.replace("sendonly", "recvonly")
    no_ice = "".join(line + "\r\n" for line in no_ice.splitlines() if not line.startswith("a=ice-"))
    with pytest.raises(SonateInputError, match="cannot answer"):
        await viewers.answer(no_ice, playout, "session")
    await sender.close()
    assert viewers.viewer_count("session") == 0


async def test_close_leaves_no_connections_or_tasks() -> None:
    before = asyncio.all_tasks()
    changes: list[tuple[str, int]] = []
    playout = Playout(SAMPLE_RATE, FPS, SIZE, SIZE)
    viewers = WebRTCViewers(on_viewers_changed=lambda session, count: changes.append((session, count)))
    feeder = Feeder(playout)
    feeder.start()
    (pc1, id1), (pc2, _) = await asyncio.gather(connect_viewer(viewers, playout), connect_viewer(viewers, playout))
    assert viewers.viewer_count("session") == 2 and viewers.viewer_count("other") == 0
    frame = await remote_track(pc1, "video").recv()
    assert (frame.width, frame.height) == (SIZE, SIZE)

    assert await viewers.close(id1)
    assert not await viewers.close(id1)
    await wait_for(lambda: pc1.connectionState == "closed", timeout=5)  # the server's end really hung up
    assert viewers.viewer_count("session") == 1
    await viewers.close_all()
    await viewers.close_all()
    assert viewers.viewer_count("session") == 0
    assert changes == [("session", 1), ("session", 2), ("session", 1), ("session", 0)]
    await feeder.stop()
    await pc1.close()
    await pc2.close()
    await assert_no_new_tasks(before)


async def test_viewer_that_never_connects_is_dropped() -> None:
    before = asyncio.all_tasks()
    playout = Playout(SAMPLE_RATE, FPS, SIZE, SIZE)
    viewers = WebRTCViewers(ice_timeout_s=0.5)
    pc = RTCPeerConnection(NO_ICE_SERVERS)
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    await viewers.answer(pc.localDescription.sdp, playout, "session")  # the answer never reaches the client
    assert viewers.viewer_count("session") == 1
    await wait_for(lambda: viewers.viewer_count("session") == 0, timeout=5)
    await pc.close()
    await assert_no_new_tasks(before)


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def assert_no_new_tasks(before: set[asyncio.Task]) -> None:
    """Every task started since `before` ends (allowing a moment for cancelled ones to unwind)."""
    with contextlib.suppress(TimeoutError):
        await wait_for(lambda: not (asyncio.all_tasks() - before), timeout=2)
    assert not (asyncio.all_tasks() - before), asyncio.all_tasks() - before


# --- slow: seconds of real-time streaming ----------------------------------------------------------------------


@pytest.mark.slow
async def test_claps_arrive_in_sync_and_audio_is_continuous() -> None:
    audio, video, _ = await watch_clapper(seconds=4.0)
    flashes, beeps, offsets = measure_offsets(audio, video)
    assert len(flashes) >= 3 and len(beeps) == len(flashes), (flashes, beeps)
    assert all(abs(offset) < FRAME_SECONDS for offset in offsets), offsets
    assert_continuous(audio)


@pytest.mark.slow
async def test_underrun_holds_both_tracks_together() -> None:
    """The feeder stops after 6 chunks (1.92 s), the playout runs dry and holds ~0.6 s, then feeding resumes."""
    audio, video, playout = await watch_clapper(seconds=4.6, pause_after=6)
    assert playout.underruns == 1 and playout.holds * TICK >= 0.6
    flashes, beeps, offsets = measure_offsets(audio, video)
    assert len(flashes) >= 3 and len(beeps) == len(flashes), (flashes, beeps)
    assert all(abs(offset) < FRAME_SECONDS for offset in offsets), offsets
    # the claps after the hold arrive late by the hold on both tracks: media 2.52 s plays at ≥ 3.12 s
    assert max(flashes) - min(flashes) > 2.6
    assert_continuous(audio)  # a hold is silence, not a gap
