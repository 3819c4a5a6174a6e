"""The multi-encoder VLM: encoder adapters, projectors, fusion, the LLM, presets, checkpoints."""
