"""Data: LLaVA-format instruction and evaluation files, images, the synthetic benchmark."""
