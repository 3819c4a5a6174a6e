"""``--template NAME``: the conversation template prompts are written in, overriding the model's.

A model brings its template: meteor's checkpoints record it in their config, an EAGLE release
gets it from its tokenizer (``<|eot_id|>`` → ``eagle_llama3``, ``<|im_start|>`` →
``eagle_yi_chatml``, else ``vicuna_v1``; :func:`meteor_cli.model.eagle.format.pick_template`).
``--template`` overrides it where a model is loaded to answer prompts (``eval``, ``infer``,
``prune-llm --calibrate``). Transformers VLMs (LLaVA, Qwen2-VL directories) use their own chat
template and refuse the flag.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from meteor_cli.errors import UsageError

TemplateOption = Annotated[str | None, typer.Option(
    "--template", metavar="NAME",
    help="Conversation template of the prompts, instead of the model's own (an EAGLE release: picked from its "
         "tokenizer). Known: plain, vicuna_v1, llama3, chatml, eagle_llama3, eagle_yi_chatml.", show_default=False)]


def check_template(name: str | None) -> str | None:
    """``name`` if it is a known template (None passes); else a :class:`UsageError` listing the known ones."""
    from meteor_cli.model.llm import TEMPLATES

    if name is not None and name not in TEMPLATES:
        import difflib

        close = difflib.get_close_matches(name, list(TEMPLATES), n=2)
        guess = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise UsageError(f"--template {name!r} is not a known conversation template",
                         f"{guess}known templates: {', '.join(TEMPLATES)}")
    return name


def apply_template(vlm: Any, name: str | None) -> Any:
    """Set ``vlm``'s template to ``name`` (None: keep the model's); returns ``vlm``."""
    if check_template(name) is None:
        return vlm
    cfg = getattr(vlm, "cfg", None)
    if cfg is None or not hasattr(cfg, "template"):
        raise UsageError(f"--template is for meteor's models; a {type(vlm).__name__} prompts with its own chat template",
                         "drop --template")
    cfg.template = name
    return vlm


__all__ = ["TemplateOption", "apply_template", "check_template"]
