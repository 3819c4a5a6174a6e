"""Released EAGLE checkpoints (NVlabs/EAGLE, Eagle-X4/X5) as a meteor model family.

Importing this package registers the five tower adapters (``eagle-clip``, ``eagle-convnext``,
``eagle-sam``, ``eagle-det``, ``eagle-pix2struct``) and the ``eagle`` checkpoint format, so
``--model PATH/TO/Eagle-X5-7B`` works wherever ``--model`` takes a directory. See
:mod:`meteor_cli.model.eagle.format` for what is read and how, and docs/eagle.md.
"""

from meteor_cli.model.eagle import format, towers  # noqa: F401  (registration)
from meteor_cli.model.eagle.format import build_empty, load, read_release, to_meteor, to_release

__all__ = ["build_empty", "load", "read_release", "to_meteor", "to_release"]
