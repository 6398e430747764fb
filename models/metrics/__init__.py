"""Quality measured the paper's way on the synthetic world: lip sync, intelligibility, timbre, identity.

pocketsphinx and Resemblyzer load lazily, on the first transcript or embedding.
"""

from sonate.models.metrics.evaluate import GROUND_TRUTH, evaluate, format_report
from sonate.models.metrics.identity import identity_error
from sonate.models.metrics.intelligibility import transcribe, word_error_rate
from sonate.models.metrics.sync import SyncScore, audio_envelope, lip_sync, mouth_openness
from sonate.models.metrics.timbre import cosine, speaker_embedding

__all__ = [
    "GROUND_TRUTH",
    "SyncScore",
    "audio_envelope",
    "cosine",
    "evaluate",
    "format_report",
    "identity_error",
    "lip_sync",
    "mouth_openness",
    "speaker_embedding",
    "transcribe",
    "word_error_rate",
]
