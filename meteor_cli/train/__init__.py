"""Training: the model-agnostic loop (``loop``) and the VLM task that plugs into it."""
