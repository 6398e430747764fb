"""What every benchmark run leaves behind: its figures as JSON (with the machine, the versions and the git
revision), PNG plots beside it, and a Markdown summary that shows the same table as the console and the plots.

`write_outputs(result, report, path)` writes `path` (JSON), `path` with `.md`, and `<stem>-<plot>.png` for each
plot; a run without `--json` only prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PACKAGES = ("sonate", "torch", "triton", "numpy", "aiortc", "av", "uvicorn", "fastapi", "websockets", "matplotlib")
SOURCE = Path(__file__).resolve().parents[1]  # the checkout, when sonate runs from one


@dataclass
class Report:
    """A benchmark's readable figures: a title, one `name  text` row per figure, and optional tables
    (a header row, then rows) that the console and the Markdown both show."""

    title: str
    rows: list[tuple[str, str]]
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)  # (caption, header, rows)

    def print(self) -> None:
        print_rows(self.title, self.rows)
        for caption, header, rows in self.tables:
            print(f"\n  {caption}")
            widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
            for row in [header, *rows]:
                print("  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))

    def markdown(self, images: list[Path]) -> str:
        """The report as Markdown, with `images` (paths relative to the Markdown file) under it."""
        lines = [f"# {self.title}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {name} | {text.replace('|', '/')} |" for name, text in self.rows]
        for caption, header, rows in self.tables:
            lines += ["", f"**{caption}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        for image in images:
            lines += ["", f"![{image.stem}]({image.as_posix()})"]
        return "\n".join(lines) + "\n"


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a benchmark report: a title, then one aligned `name  text` line per figure."""
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, text in rows:
        print(f"  {name:<{width}}  {text}")


def run_info() -> dict:
    """Where and with what a benchmark ran: the machine, package versions, the git revision, the time."""
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": list(os.getloadavg()),  # 1, 5 and 15 minutes
        },
        "versions": versions,
        "git_revision": git_revision(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def git_revision() -> str | None:
    """The commit sonate runs from (with `+dirty` when the checkout has changes), or None outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "-C", str(SOURCE), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if status.strip() else "")


def write_outputs(
    result: dict, report: Report, path: Path | None, plots: dict[str, Callable[[Path], None]] | None = None
) -> None:
    """Print `report`; with a `path`, also write the JSON there, each plot as `<stem>-<name>.png` and the
    Markdown summary as `<stem>.md`."""
    report.print()
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    images = []
    for name, draw in (plots or {}).items():
        image = path.with_name(f"{path.stem}-{name}.png")
        draw(image)
        images.append(Path(image.name))
    path.with_suffix(".md").write_text(report.markdown(images))
    print(f"\nwrote {path}, {path.with_suffix('.md').name}" + "".join(f", {image}" for image in images))
