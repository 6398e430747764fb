"""A small ctypes binding to libespeak-ng (from the ``espeakng-loader`` wheel): text → samples + timed phonemes.

espeak-ng keeps global state (voice, parameters, callback), so the library is initialised once, lazily, and
every call into it holds one module-level lock. Struct layouts and constants follow espeak-ng's
``src/include/espeak-ng/speak_lib.h`` (API revision 12).

Reproducibility: espeak's wave generator keeps state across messages (the pitch-flutter phase, the roughness
cycle counter, the gain control, the breath resonators, the echo buffer, a random generator), so the same text
synthesized twice gives audio of slightly different length. Before every synthesis this module re-selects the
voice (clears the echo), seeds espeak's generator, and resets the other statics through the library's ELF symbol
table (the wheel's .so is not stripped). Then the same (text, voice, parameters) always give the same samples
and phoneme times, whatever was synthesized before, which the frontend's split invariance relies on.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import struct
import threading
from dataclasses import dataclass

import numpy as np

from sonate.models.errors import SonateInputError

logger = logging.getLogger(__name__)

# --- constants from speak_lib.h ----------------------------------------------------------------------------
AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: like RETRIEVAL, but espeak_Synth returns when done
espeakINITIALIZE_PHONEME_EVENTS = 0x0001
espeakCHARS_UTF8 = 1
POS_CHARACTER = 1  # espeak_POSITION_TYPE
espeakEVENT_LIST_TERMINATED = 0
espeakEVENT_WORD = 1
espeakEVENT_PHONEME = 7
espeakRATE = 1  # espeak_PARAMETER
espeakPITCH = 3
espeakRANGE = 4
EE_OK = 0
EE_NOT_FOUND = 2

RATE_MIN_WPM, RATE_MAX_WPM = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM
BUFFER_MS = 200  # length of the sound buffers espeak hands to the callback, in ms
PAUSE_PREFIX = "_"  # espeak's pause mnemonics all start with it: "_", "_:", "_!", ...
RAND_SEED = 0  # espeak_ng_SetRandSeed before every synthesis
# function-static ints in wavegen.c that survive across messages, and the value a fresh process starts with
_STATIC_INTS = {"Flutter_ix": 0, "cycle_count": 0, "agc": 256}
_INIT_BREATH = "InitBreath"  # wavegen.c: zeroes the breath-noise resonators


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),  # WORD and SENTENCE events
        ("name", ctypes.c_char_p),  # MARK and PLAY events
        ("string", ctypes.c_char * 8),  # PHONEME events: mnemonic, NUL-terminated unless 8 bytes long
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),  # espeak_EVENT_TYPE
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the synthesized text
        ("length", ctypes.c_int),  # word length in characters (WORD events)
        ("audio_position", ctypes.c_int),  # ms from the start of this message's audio
        ("sample", ctypes.c_int),  # sample index from the start of this message's audio (exact)
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class TimedPhoneme:
    """One phoneme (or pause) on a timeline.

    ``start_s``/``end_s`` are seconds from the start of the timeline (end exclusive); ``speaker`` is the
    speaker id (0..MAX_SPEAKERS-1); ``text_start``/``text_end`` are character offsets [start, end) of the word
    the phoneme belongs to, or -1/-1 for pauses. Pause symbols start with ``_``.
    """

    symbol: str
    start_s: float
    end_s: float
    speaker: int = 0
    text_start: int = -1
    text_end: int = -1

    @property
    def is_pause(self) -> bool:
        """True for silence / pause entries."""
        return self.symbol.startswith(PAUSE_PREFIX)


@dataclass
class Synthesis:
    """espeak's output for one text.

    ``samples``: mono float32 in [-1, 1] at ``sample_rate`` Hz. ``phonemes``: every phoneme event in order,
    pauses included, with times in seconds from the start of ``samples`` (each ends where the next begins; the
    last ends at the end of the audio) and text offsets into the synthesized text (0-based, end exclusive).
    """

    samples: np.ndarray
    sample_rate: int
    phonemes: list[TimedPhoneme]


class _Espeak:
    """The loaded library and the state of one synthesis; only touched with ``_LOCK`` held."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path().encode()
        sample_rate = lib.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path, espeakINITIALIZE_PHONEME_EVENTS
        )
        if sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({sample_rate}) with data path {data_path!r}")
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
        self.lib = lib
        self.sample_rate = sample_rate
        self._statics, self._init_breath = _wavegen_state(lib, espeakng_loader.get_library_path())
        self.chunks: list[np.ndarray] = []
        # (type, sample, text_position, length, mnemonic) per event, in emission order
        self.events: list[tuple[int, int, int, int, str]] = []
        self._callback = _SynthCallback(self._on_synth)  # keep a reference: espeak holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def reset(self, voice: str) -> int:
        """Bring the synthesizer to the same state before every message; returns espeak's voice status."""
        for cell, value in self._statics:
            cell.value = value
        if self._init_breath is not None:
            self._init_breath()
        self.lib.espeak_ng_SetRandSeed(RAND_SEED)
        return self.lib.espeak_SetVoiceByName(voice.encode("utf-8"))  # also clears the echo buffer

    def _on_synth(self, wav, num_samples: int, events) -> int:
        if wav and num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != espeakEVENT_LIST_TERMINATED:
            event = events[i]
            if event.type in (espeakEVENT_WORD, espeakEVENT_PHONEME):
                name = ""
                if event.type == espeakEVENT_PHONEME:
                    name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", errors="replace")
                self.events.append((event.type, event.sample, event.text_position, event.length, name))
            i += 1
        return 0  # continue synthesis


_LOCK = threading.Lock()  # espeak is one global synthesizer: every call into it holds this


@functools.cache
def _engine() -> _Espeak:
    """The process's one initialised library (created on first use, with ``_LOCK`` held)."""
    return _Espeak()


def sample_rate() -> int:
    """espeak's output sample rate in Hz (22050 for the bundled voices)."""
    with _LOCK:
        return _engine().sample_rate


def synthesize(
    text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50, pitch_range: int = 50
) -> Synthesis:
    """Synthesize ``text`` with espeak-ng and return its audio and timed phonemes.

    ``voice`` is an espeak voice name, variants included (``"en-us+f3"``); ``rate_wpm`` is words per minute
    (80..450); ``pitch`` and ``pitch_range`` are espeak's 0..100 scales (50 = the voice's normal). All
    parameters are set on every call, since espeak keeps them in global state. Thread-safe.
    """
    if not isinstance(text, str):
        raise SonateInputError(f"text must be a str, got {type(text).__name__}")
    if "\0" in text:
        raise SonateInputError("text must not contain NUL characters")
    if not isinstance(voice, str) or not voice:
        raise SonateInputError(f"voice must be a non-empty espeak voice name such as 'en-us', got {voice!r}")
    for name, value, low, high in (
        ("rate_wpm", rate_wpm, RATE_MIN_WPM, RATE_MAX_WPM),
        ("pitch", pitch, 0, 100),
        ("pitch_range", pitch_range, 0, 100),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise SonateInputError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    encoded = text.encode("utf-8")
    with _LOCK:
        engine = _engine()
        lib = engine.lib
        if engine.reset(voice) != EE_OK:
            raise SonateInputError(f"unknown espeak voice {voice!r} (try 'en-us' or 'en-us+f3')")
        lib.espeak_SetParameter(espeakRATE, rate_wpm, 0)
        lib.espeak_SetParameter(espeakPITCH, pitch, 0)
        lib.espeak_SetParameter(espeakRANGE, pitch_range, 0)
        engine.chunks, engine.events = [], []
        try:
            err = lib.espeak_Synth(encoded, len(encoded) + 1, 0, POS_CHARACTER, 0, espeakCHARS_UTF8, None, None)
            if err != EE_OK:
                raise RuntimeError(f"espeak_Synth failed with error {err}")
            chunks, events = engine.chunks, engine.events
        finally:
            engine.chunks, engine.events = [], []
        sr = engine.sample_rate
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    samples = pcm.astype(np.float32) / 32768.0
    return Synthesis(samples=samples, sample_rate=sr, phonemes=_timed_phonemes(events, len(pcm), sr))


def _timed_phonemes(events: list[tuple[int, int, int, int, str]], n_samples: int, sr: int) -> list[TimedPhoneme]:
    """Turn WORD/PHONEME events into phonemes: each ends where the next begins, the last at the audio's end."""
    starts: list[tuple[str, int, int, int]] = []  # (symbol, sample, text_start, text_end)
    word = (-1, -1)
    for kind, sample, text_position, length, name in events:
        if kind == espeakEVENT_WORD:
            word = (text_position - 1, text_position - 1 + length)
        elif name:
            span = (-1, -1) if name.startswith(PAUSE_PREFIX) else word
            starts.append((name, min(max(sample, 0), n_samples), *span))
    phonemes = []
    for i, (name, sample, text_start, text_end) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else n_samples
        phonemes.append(TimedPhoneme(name, sample / sr, max(end, sample) / sr, 0, text_start, text_end))
    return phonemes


def _wavegen_state(lib: ctypes.CDLL, path: str) -> tuple[list[tuple[ctypes.c_int, int]], object]:
    """Locate wavegen's persistent statics in the loaded library; empty if its symbol table is unavailable."""
    names = [*_STATIC_INTS, _INIT_BREATH, "espeak_Synth"]
    try:
        symbols = _elf_symbols(path, names)
    except (OSError, ValueError, struct.error):
        symbols = {}
    if any(name not in symbols for name in names):
        logger.warning("libespeak-ng symbol table not readable: synthesis will not be exactly reproducible")
        return [], None
    base = ctypes.cast(lib.espeak_Synth, ctypes.c_void_p).value - symbols["espeak_Synth"]
    statics = [(ctypes.c_int.from_address(base + symbols[name]), value) for name, value in _STATIC_INTS.items()]
    return statics, ctypes.CFUNCTYPE(None)(base + symbols[_INIT_BREATH])


def _elf_symbols(path: str, names: list[str]) -> dict[str, int]:
    """Addresses (relative to the load base) of the named symbols in an ELF64 little-endian .so's .symtab.

    Function-static variables carry a compiler suffix (``Flutter_ix.5965``): ``name.<digits>`` matches ``name``.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not an ELF64 little-endian file")
    (section_offset,) = struct.unpack_from("<Q", data, 0x28)
    section_size, section_count = struct.unpack_from("<HH", data, 0x3A)
    # Elf64_Shdr: name, type, flags, addr, offset, size, link, info, addralign, entsize
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, section_offset + i * section_size) for i in range(section_count)
    ]
    wanted = set(names)
    found: dict[str, int] = {}
    for _, kind, _, _, offset, size, link, _, _, entry_size in sections:
        if kind != 2 or entry_size == 0:  # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for j in range(size // entry_size):
            # Elf64_Sym: name, info, other, shndx, value, size
            name_offset, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, offset + j * entry_size)
            start = strings + name_offset
            name = data[start : data.index(b"\0", start)].decode("utf-8", errors="replace")
            base_name, _, suffix = name.partition(".")
            if name in wanted or (base_name in wanted and suffix.isdigit()):
                found[name if name in wanted else base_name] = value
    return found
