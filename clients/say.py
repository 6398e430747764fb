"""`sonate say`: speak a text through a running server and record the reply as an MP4.

```
sonate say --server http://127.0.0.1:8000 "Hello there!" --out reply.mp4 [--voice me.wav] [--avatar me.png]
           [--instruction "a calm voice"] [--words-per-second 30] [--api-key KEY]
```

It uploads the references given, opens a session, connects the websocket and a WebRTC viewer, streams the text
(word by word at `--words-per-second`, or all at once), flushes, records until the speech is done plus a short
tail, writes the MP4 and prints when the speech arrived. Bad input or an unreachable server: one line on stderr,
exit status 2.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from sonate.clients.client import ClientOptions, ClientSession, SonateClient, SonateClientError
from sonate.clients.latency import SpeechLatency
from sonate.models.errors import SonateInputError

log = logging.getLogger(__name__)

TAIL_S = 0.5  # seconds recorded after the speech is done
FIRST_MEDIA_TIMEOUT_S = 10.0  # seconds to wait for the first WebRTC frames before speaking
SPEECH_TIMEOUT_MARGIN_S = 30.0  # speech.done may come this long after the text would have been spoken at 1 word/s


@dataclass(frozen=True)
class SayResult:
    """What `say` did: the file, its seconds of media, the first utterance's latency and the speech's duration."""

    out: Path
    media_seconds: float
    speech_seconds: float
    latency: SpeechLatency | None


async def say(
    server: str,
    text: str,
    out: Path,
    *,
    voice: Path | None = None,
    avatar: Path | None = None,
    instruction: str = "",
    words_per_second: float | None = None,
    api_key: str | None = None,
) -> SayResult:
    """Speak `text` through the server at `server` (with `api_key`, where it asks for one) and record the reply
    to `out` (an MP4)."""
    if not text.strip():
        raise SonateInputError("give a text to say")
    if words_per_second is not None and words_per_second <= 0:
        raise SonateInputError(f"--words-per-second must be positive, got {words_per_second:g}")
    if not out.parent.is_dir():
        raise SonateInputError(f"cannot write {out}: folder {out.parent} does not exist")
    references = {}
    for name, path in (("voice", voice), ("avatar", avatar)):
        if path is not None:
            try:
                references[name] = path.read_bytes()
            except OSError as exc:
                raise SonateInputError(f"cannot read the {name} file {path}: {exc.strerror or exc}") from None

    client = SonateClient(server, api_key=api_key)
    voice_id = await client.upload_voice(references["voice"]) if "voice" in references else None
    avatar_id = await client.upload_avatar(references["avatar"]) if "avatar" in references else None
    info = await client.create_session(voice_id=voice_id, avatar_id=avatar_id, instruction=instruction)
    try:
        options = ClientOptions(record_to=out, reference=True)
        async with ClientSession(client, info, options) as session:
            assert session.recorder is not None
            try:
                await asyncio.wait_for(session.recorder.media_arrived.wait(), FIRST_MEDIA_TIMEOUT_S)
            except TimeoutError:
                raise SonateClientError(f"no media arrived over WebRTC within {FIRST_MEDIA_TIMEOUT_S:g} s") from None
            pieces = await session.stream_text(text, words_per_second)
            await session.flush()
            last = await session.wait_for("input.accepted", lambda e: e.get("id") == pieces[-1].id)
            spoken_end = int(last["text_end"]) - (len(text) - len(text.rstrip()))  # type: ignore[call-overload]
            timeout = len(text.split()) + SPEECH_TIMEOUT_MARGIN_S
            await session.wait_for("speech.done", lambda e: e["text_end"] >= spoken_end, timeout=timeout)  # type: ignore[operator]
            await asyncio.sleep(TAIL_S)
    finally:
        try:
            await client.delete_session(info.session_id)
        except SonateClientError as exc:  # it expires on its own; the recording is what matters
            log.warning("could not delete session %s: %s", info.session_id, exc)
    events = [e for e in session.history if e.type in ("speech.started", "speech.done")]
    starts = [float(e["media_time"]) for e in events if e.type == "speech.started"]  # type: ignore[arg-type]
    ends = [float(e["media_time"]) for e in events if e.type == "speech.done"]  # type: ignore[arg-type]
    latencies = session.speech_latencies()
    assert session.recorder is not None
    return SayResult(
        out,
        session.recorder.video_seconds,
        max(ends) - min(starts) if starts and ends else 0.0,
        latencies[0] if latencies else None,
    )
