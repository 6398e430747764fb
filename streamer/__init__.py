"""The streaming side of sonate: the engine, its media, the server, the benchmarks and the CLI.

The embedding API is importable from here (`from sonate.streamer import Engine`); the names are loaded on first use,
so importing a light module such as `sonate.streamer.protocol` never loads the engine or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sonate.streamer.engine.engine import Engine, EngineConfig, EngineFull
    from sonate.streamer.engine.session import Session
    from sonate.streamer.media.chunk import AVChunk

_EXPORTS = {  # name: the module that defines it
    "Engine": "sonate.streamer.engine.engine",
    "EngineConfig": "sonate.streamer.engine.engine",
    "EngineFull": "sonate.streamer.engine.engine",
    "Session": "sonate.streamer.engine.session",
    "AVChunk": "sonate.streamer.media.chunk",
}
__all__ = ["AVChunk", "Engine", "EngineConfig", "EngineFull", "Session"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
