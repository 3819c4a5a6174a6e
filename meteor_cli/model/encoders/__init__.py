"""Encoder adapters: unmodified timm / transformers modules exposed block by block.

Importing this package registers every family (``meteor list encoders``).
"""

from meteor_cli.model.encoders import clip, convnext, eva02, pix2struct, sam, siglip, vit  # noqa: F401  (registration)
from meteor_cli.model.encoders.base import EncoderAdapter, TokenState, build_encoder

__all__ = ["EncoderAdapter", "TokenState", "build_encoder"]
