"""The joint audio-video model: config, transformer, conditioning, sampler, KV cache, frontend, decoders."""
