"""Media types and clocks shared by the engine, the server and the clients: the chunk, the playout clock,
resampling to 48 kHz, MP4 files and the A/V sync test source. Nothing here imports torch."""
