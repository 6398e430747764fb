"""The engine, the server, the CLI and the benchmarks."""
