"""Trickle ICE SDP fragments (RFC 8840, `application/trickle-ice-sdpfrag`) as WHEP clients PATCH them: the ICE
credentials, the candidates (each with its media section's `a=mid`) and whether `a=end-of-candidates` ends them."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from sonate.models.errors import SonateInputError

FRAGMENT_LINES = ("ice-ufrag", "ice-pwd", "mid", "candidate", "end-of-candidates")  # the a= lines read; others skip


@dataclass
class IceFragment:
    """A parsed fragment: the ICE username fragment and password (None where it gives none), the candidates
    (`sdpMid` set) and whether the sender has no more candidates."""

    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[RTCIceCandidate] = field(default_factory=list)
    end_of_candidates: bool = False


def parse_fragment(text: str) -> IceFragment:
    """Parse an SDP fragment. `m=` lines are optional (without one the fragment is a single media section named
    by its `a=mid`); each candidate takes the mid of its section. SonateInputError for a candidate it cannot read,
    a candidate in a section without a mid, or an empty or repeated-but-different credential."""
    fragment = IceFragment()
    section: list[RTCIceCandidate] = []  # the candidates of the current media section
    mid: str | None = None

    def end_section() -> None:
        if section and not mid:
            raise SonateInputError("a media section of the fragment has candidates but no a=mid line")
        for candidate in section:
            candidate.sdpMid = mid
        fragment.candidates.extend(section)
        section.clear()

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        name, _, value = line.removeprefix("a=").partition(":")
        value = value.strip()
        if line.startswith("m="):
            end_section()
            mid = None
        elif not line.startswith("a=") or name not in FRAGMENT_LINES:
            continue
        elif name == "ice-ufrag":
            fragment.ufrag = _credential(fragment.ufrag, value, line, number)
        elif name == "ice-pwd":
            fragment.pwd = _credential(fragment.pwd, value, line, number)
        elif name == "mid":
            mid = value
        elif name == "end-of-candidates":
            fragment.end_of_candidates = True
        else:
            section.append(_candidate(value, number))
    end_section()
    return fragment


def _credential(current: str | None, value: str, line: str, number: int) -> str:
    if not value or (current is not None and current != value):
        raise SonateInputError(f"line {number}: {line[:80]!r} is empty or differs from the credential before it")
    return value


def _candidate(value: str, number: int) -> RTCIceCandidate:
    try:
        return candidate_from_sdp(value)
    except (AssertionError, ValueError, IndexError):  # aiortc asserts on a short line
        raise SonateInputError(f"line {number}: not an ICE candidate: a=candidate:{value[:80]}") from None
