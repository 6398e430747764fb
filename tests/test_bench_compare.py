"""`sonate bench compare`: ratios between two fixed benchmark results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sonate.models.errors import SonateInputError
from sonate.streamer.bench.compare import compare

FIXTURES = Path(__file__).parent / "fixtures"
A, B = FIXTURES / "bench-e2e-a.json", FIXTURES / "bench-e2e-b.json"


def test_compare_gives_b_over_a_for_every_shared_number() -> None:
    rows = {row.name: row for row in compare(json.loads(A.read_text()), json.loads(B.read_text()))}
    assert sorted(rows) == ["machine.cpu_count", "rtf", "sessions", "ttfa_ms_p50", "ttfa_ms_p95", "underruns"]
    assert rows["ttfa_ms_p50"].ratio == pytest.approx(371 / 589)
    assert rows["ttfa_ms_p95"].ratio == pytest.approx(544 / 689)
    assert rows["rtf"].ratio == pytest.approx(0.395 / 0.503)
    assert rows["machine.cpu_count"].ratio == 1.0
    assert (rows["underruns"].a, rows["underruns"].b, rows["underruns"].ratio) == (0.0, 2.0, None)  # A is 0


def test_runs_of_different_benchmarks_are_refused() -> None:
    with pytest.raises(SonateInputError, match="cannot compare"):
        compare({"benchmark": "e2e"}, {"benchmark": "model"})


def test_the_command_prints_the_ratios_and_rejects_bad_files(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "sonate.streamer.cli.main", "bench", "compare"]
    done = subprocess.run([*run, str(A), str(B)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(row for row in done.stdout.splitlines() if row.startswith("ttfa_ms_p50"))
    assert line.split() == ["ttfa_ms_p50", "589", "371", f"{371 / 589:.3f}"]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    done = subprocess.run([*run, str(A), str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not JSON" in done.stderr
