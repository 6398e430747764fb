"""The session protocol on the wire: websocket messages, HTTP request bodies and the binary media framing.

Shared by the server and the Python client so both read and write the same bytes. Client messages are JSON
text objects with a `type`; `parse_client_message` turns one into a dataclass or raises `ProtocolError` with the
error code the server sends back. Media travels in binary messages: a fixed `MEDIA_HEADER` (little-endian)
followed by the payload — PCM16 mono audio at the session's sample rate, or one JPEG frame. The full protocol,
with examples, is in docs/protocol.md.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_PIECE_CHARS = 4096  # characters of one text piece (`input.text`, `Session.push_text`)
MAX_MESSAGE_BYTES = 64 * 1024  # one client text message; a longer one is answered with `message_too_large`
MAX_ID_CHARS = 64  # a client message's optional `id`, echoed in replies

# --- binary media framing ----------------------------------------------------------------------------------

MEDIA_MAGIC = b"SNT1"
MEDIA_HEADER = struct.Struct("<4sBBHdI")  # magic, kind, flags, reserved, pts (s, float64), payload bytes (uint32)
KIND_AUDIO = 1  # payload: PCM16 little-endian mono samples at the session's sample rate
KIND_VIDEO = 2  # payload: one JPEG image (width × height of session.ready)


@dataclass(frozen=True)
class MediaMessage:
    """One binary media message: `kind` (KIND_AUDIO or KIND_VIDEO), `pts` (s of session media time), `payload`."""

    kind: int
    pts: float
    payload: bytes

    def encode(self) -> bytes:
        """Header + payload, ready to send as one binary websocket message."""
        return MEDIA_HEADER.pack(MEDIA_MAGIC, self.kind, 0, 0, self.pts, len(self.payload)) + self.payload

    @classmethod
    def decode(cls, data: bytes) -> MediaMessage:
        """Parse a binary message; ValueError if it is not one."""
        if len(data) < MEDIA_HEADER.size:
            raise ValueError(f"a media message has at least {MEDIA_HEADER.size} bytes, got {len(data)}")
        magic, kind, _flags, _reserved, pts, length = MEDIA_HEADER.unpack_from(data)
        if magic != MEDIA_MAGIC or kind not in (KIND_AUDIO, KIND_VIDEO):
            raise ValueError(f"not a sonate media message (magic {magic!r}, kind {kind})")
        if len(data) != MEDIA_HEADER.size + length:
            raise ValueError(f"the header announces {length} payload bytes, the message has {len(data) - 20}")
        return cls(kind, pts, bytes(data[MEDIA_HEADER.size :]))


# --- client → server ---------------------------------------------------------------------------------------


class ProtocolError(ValueError):
    """A client message or request body the server refuses; `code` is the `error` event's code."""

    def __init__(self, code: str, message: str, message_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id


@dataclass(frozen=True)
class InputText:
    """Append a piece of text (a word, an LLM token, a sentence) to what the avatar says."""

    text: str
    id: str | int | None = None


@dataclass(frozen=True)
class InputFlush:
    """Speak the text still waiting now (the last word needs no following space)."""

    id: str | int | None = None


@dataclass(frozen=True)
class InputInterrupt:
    """Barge-in: stop speaking at the end of the chunk playing now and drop the unspoken text."""

    id: str | int | None = None


@dataclass(frozen=True)
class SessionUpdate:
    """Change the instruction, voice or avatar from the next chunk on; None leaves a field as it is."""

    instruction: str | None = None
    voice_id: str | None = None
    avatar_id: str | None = None
    id: str | int | None = None


@dataclass(frozen=True)
class MediaSubscribe:
    """Start sending binary media messages on this socket (it then counts as a viewer)."""

    id: str | int | None = None


@dataclass(frozen=True)
class MediaUnsubscribe:
    """Stop sending media on this socket."""

    id: str | int | None = None


ClientMessage = InputText | InputFlush | InputInterrupt | SessionUpdate | MediaSubscribe | MediaUnsubscribe

CLIENT_TYPES: dict[str, type] = {
    "input.text": InputText,
    "input.flush": InputFlush,
    "input.interrupt": InputInterrupt,
    "session.update": SessionUpdate,
    "media.subscribe": MediaSubscribe,
    "media.unsubscribe": MediaUnsubscribe,
}
_TYPE_NAMES = {cls: name for name, cls in CLIENT_TYPES.items()}


def message_type(message: ClientMessage) -> str:
    """The wire `type` of a client message."""
    return _TYPE_NAMES[type(message)]


def encode_client_message(message: ClientMessage) -> str:
    """A client message as the JSON text the server reads (fields that are None are left out)."""
    fields = {k: v for k, v in vars(message).items() if v is not None}
    return json.dumps({"type": message_type(message), **fields})


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Parse one websocket text message; raises ProtocolError(code, message) for anything the server refuses."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("message_too_large", f"a message may hold at most {MAX_MESSAGE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("invalid_json", f"the message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", 'a message is a JSON object with a "type"')
    message_id = data.get("id")
    if not (message_id is None or _is_id(message_id)):
        raise ProtocolError("invalid_message", f'"id" must be a string of at most {MAX_ID_CHARS} chars or an integer')
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_message", 'a message needs a string "type"', message_id)
    cls = CLIENT_TYPES.get(kind)
    if cls is None:
        known = ", ".join(CLIENT_TYPES)
        raise ProtocolError("unknown_type", f"unknown message type {kind[:64]!r}; known types: {known}", message_id)
    if cls is InputText:
        text = data.get("text")
        if not isinstance(text, str):
            raise ProtocolError("invalid_message", 'input.text needs a string "text"', message_id)
        if len(text) > MAX_PIECE_CHARS:
            raise ProtocolError(
                "text_too_long",
                f"one input.text may hold at most {MAX_PIECE_CHARS} characters, got {len(text)}; send it in pieces",
                message_id,
            )
        return InputText(text, message_id)
    if cls is SessionUpdate:
        values = {name: data.get(name) for name in ("instruction", "voice_id", "avatar_id")}
        for name, value in values.items():
            if value is not None and not isinstance(value, str):
                raise ProtocolError("invalid_message", f'session.update: "{name}" must be a string', message_id)
        if all(value is None for value in values.values()):
            raise ProtocolError(
                "invalid_message", 'session.update needs "instruction", "voice_id" or "avatar_id"', message_id
            )
        return SessionUpdate(**values, id=message_id)
    return cls(id=message_id)


def _is_id(value: Any) -> bool:
    return (isinstance(value, str) and len(value) <= MAX_ID_CHARS) or (
        isinstance(value, int) and not isinstance(value, bool)
    )


# --- server → client ---------------------------------------------------------------------------------------


def error_event(code: str, message: str, message_id: str | int | None = None) -> dict:
    """The `error` event of the websocket; the socket stays open."""
    event: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if message_id is not None:
        event["id"] = message_id
    return event


def error_body(code: str, message: str) -> dict:
    """The JSON body of every HTTP error response."""
    return {"error": {"code": code, "message": message}}


# --- HTTP request bodies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionCreate:
    """The body of POST /v1/sessions: every field optional."""

    voice_id: str = "default"
    avatar_id: str = "default"
    instruction: str = ""
    seed: int | None = None

    @classmethod
    def from_json(cls, body: bytes) -> SessionCreate:
        """Parse the request body (empty means all defaults); ProtocolError("bad_request", ...) if malformed."""
        if not body.strip():
            return cls()
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError("bad_request", f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProtocolError("bad_request", "the body is a JSON object")
        unknown = sorted(set(data) - {"voice_id", "avatar_id", "instruction", "seed"})
        if unknown:
            raise ProtocolError("bad_request", f"unknown fields: {', '.join(unknown)}")
        for name in ("voice_id", "avatar_id", "instruction"):
            if name in data and not isinstance(data[name], str):
                raise ProtocolError("bad_request", f'"{name}" must be a string')
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32):
            raise ProtocolError("bad_request", '"seed" must be an integer in [0, 2**32)')
        return cls(
            voice_id=data.get("voice_id", "default"),
            avatar_id=data.get("avatar_id", "default"),
            instruction=data.get("instruction", ""),
            seed=seed,
        )


def pcm16(audio: np.ndarray) -> bytes:
    """float32 [samples] in [-1, 1] → PCM16 little-endian bytes (what KIND_AUDIO messages carry)."""
    samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (samples * 32767).round().astype("<i2").tobytes()
