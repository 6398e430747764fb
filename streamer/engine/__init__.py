"""The engine: sessions, the scheduler that batches their chunks, the compute process, offline clips."""
