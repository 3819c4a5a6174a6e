"""Pruning: rank estimation and budgets (Stage 1), collaborative fusion pruning (Stage 2), and
instance-adaptive pruning inside the LLM (Stage 3). Submodules are imported on use, not here,
so that importing the package stays cheap."""

#: The Stage-2 redundancy score and per-encoder floor that ``meteor allocate`` and ``eval --method meteor``
#: record when not told otherwise (:mod:`meteor_cli.pruning.stage2`; here, torch-free, for ``--help``).
DEFAULT_SCORE, DEFAULT_FLOOR = "sum", 0.5
