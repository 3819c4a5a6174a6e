"""Pruning: rank estimation and budgets (Stage 1), collaborative fusion pruning (Stage 2), and
instance-adaptive pruning inside the LLM (Stage 3). Submodules are imported on use, not here,
so that importing the package stays cheap."""
