"""The documentation's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import av
import pytest

DOCS = Path(__file__).parent.parent / "docs"


@pytest.mark.slow
def test_embedding_example_runs_and_writes_a_clip(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", (DOCS / "embedding.md").read_text(), re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "speech.started" in result.stdout and "speech.done" in result.stdout
    assert "text played so far: Hello there! I am talking while the text is still arriving" in result.stdout
    with av.open(str(tmp_path / "reply.mp4")) as container:
        assert container.streams.video[0].frames > 25 and container.streams.audio
