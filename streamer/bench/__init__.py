"""The benchmarks behind `sonate bench`: they print figures and write JSON, Markdown and plots."""
