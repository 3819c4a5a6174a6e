"""The LLM side: build it, template prompts, splice visual tokens in, generate.

The visual tokens replace the single ``<image>`` placeholder of the templated prompt. Their span
(start, length) is *computed* per sample from the tokenisation — never hard-coded (FastV#16) —
and returned with the inputs so Stage 3 can find them. Batches are LEFT-padded, so the last
position of every row is its last real token (what generation reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from meteor_cli.config import LLMConfig
from meteor_cli.errors import UsageError

IMAGE = "<image>"
TEMPLATES = {
    "plain": ("{user}\n", "{answer}"),
    "vicuna_v1": ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the user's questions. USER: {user} ASSISTANT:", " {answer}"),
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant"
               "<|end_header_id|>\n\n", "{answer}"),
    "chatml": ("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", "{answer}"),
}
#: The templates meteor's own word tokenizers cover (their words are in the vocabulary).
CORE_TEMPLATES = tuple(TEMPLATES)
TEMPLATES |= {
    # EAGLE's conversation templates (eagle/conversation.py, MPT separator style), as its released
    # Plus models are prompted: ``llama3`` (Llama-3 LLMs; the system text opens with the literal
    # <|begin_of_text|>, so the prompt starts with two BOS ids as EAGLE's does) and
    # ``yi_34b_chatml_direct`` (Yi-34B).
    "eagle_llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nA chat between a curious user "
                     "and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite "
                     "answers to the user's questions.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{user}"
                     "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "{answer}"),
    "eagle_yi_chatml": ("<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n{user}<|im_end|>"
                        "<|im_start|>assistant\n", "{answer}"),
}
#: How a later turn of a multi-turn conversation opens (after the previous answer and its EOS).
FOLLOW_UPS = {
    "plain": "{user}\n",
    "vicuna_v1": "USER: {user} ASSISTANT:",
    "llama3": TEMPLATES["llama3"][0],
    "chatml": "\n" + TEMPLATES["chatml"][0],
    "eagle_llama3": "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant"
                    "<|end_header_id|>\n\n",
    "eagle_yi_chatml": "<|im_start|>user\n{user}<|im_end|><|im_start|>assistant\n",
}


def build_llm(cfg: LLMConfig) -> nn.Module:
    """An HF causal LM from a local directory, or randomly initialised from an inline config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.path is not None:
        return AutoModelForCausalLM.from_pretrained(cfg.path, attn_implementation=cfg.attn_implementation)
    hf = dict(cfg.hf_config or {})
    hf_cfg = AutoConfig.for_model(hf.pop("model_type"), **hf)
    return AutoModelForCausalLM.from_config(hf_cfg, attn_implementation=cfg.attn_implementation)


@dataclass
class LLMInputs:
    """A batch ready for the LLM (left-padded)."""

    embeds: torch.Tensor  # (B, L, d)
    attention_mask: torch.Tensor  # (B, L) long
    labels: torch.Tensor | None  # (B, L) long, -100 except answer tokens
    visual_start: list[int]
    visual_len: list[int]
    prompt_len: list[int]  # end of each prompt (answer tokens follow)


def split_prompt(template: str, user: str) -> tuple[str, str, str]:
    """(text before the image, text after it, answer format) for one templated prompt."""
    if user.count(IMAGE) != 1:
        raise UsageError(f"the prompt must contain the image placeholder {IMAGE} exactly once: {user[:80]!r}",
                         f"write e.g. '{IMAGE}\\nWhat is shown?'")
    head, answer_fmt = TEMPLATES[template]
    full = head.format(user=user)
    pre, post = full.split(IMAGE)
    return pre, post, answer_fmt


def answer_ids(tokenizer: Any, template: str, answer: str) -> list[int]:
    """Token ids of one answer as the template writes it, EOS included (the loss targets)."""
    return tokenizer(TEMPLATES[template][1].format(answer=answer), add_special_tokens=False)["input_ids"] + \
        [tokenizer.eos_token_id]


def follow_up_ids(tokenizer: Any, template: str, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(ids, labels) of the turns after the first answer: questions masked, answers + EOS targets."""
    ids: list[int] = []
    labels: list[int] = []
    for question, answer in turns:
        q = tokenizer(FOLLOW_UPS[template].format(user=question), add_special_tokens=False)["input_ids"]
        a = answer_ids(tokenizer, template, answer)
        ids += q + a
        labels += [-100] * len(q) + a
    return ids, labels


def build_inputs(tokenizer: Any, embed: nn.Module, template: str, prompts: list[str], visual: torch.Tensor,
                 answers: list[str] | None = None, turns: list[list[tuple[str, str]]] | None = None) -> LLMInputs:
    """Template, tokenise, splice ``visual`` (B, N, d) at ``<image>``; labels cover answers + EOS.

    ``turns`` (training only, with ``answers``): per sample, the (question, answer) exchanges that
    follow the first answer in a multi-turn conversation, as LLaVA's instruction data has them.
    """
    dev = visual.device
    rows, labels, starts, plens = [], [], [], []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for b, user in enumerate(prompts):
        pre, post, _ = split_prompt(template, user)
        ids_pre = bos + tokenizer(pre, add_special_tokens=False)["input_ids"]
        ids_post = tokenizer(post, add_special_tokens=False)["input_ids"]
        ids_ans: list[int] = []
        lab_ans: list[int] = []
        if answers is not None:
            ids_ans = lab_ans = answer_ids(tokenizer, template, answers[b])
            if turns is not None and turns[b]:
                more, more_lab = follow_up_ids(tokenizer, template, turns[b])
                ids_ans, lab_ans = ids_ans + more, lab_ans + more_lab
        t = lambda ids: embed(torch.tensor(ids, dtype=torch.long, device=dev))  # noqa: E731
        n = visual.shape[1]
        rows.append(torch.cat([t(ids_pre), visual[b].to(embed.weight.dtype), t(ids_post), t(ids_ans)]))
        lab = [-100] * (len(ids_pre) + n + len(ids_post)) + lab_ans
        labels.append(torch.tensor(lab, dtype=torch.long, device=dev))
        starts.append(len(ids_pre))
        plens.append(len(ids_pre) + n + len(ids_post))
    L = max(r.shape[0] for r in rows)
    B, d = len(rows), rows[0].shape[1]
    embeds = rows[0].new_zeros(B, L, d)
    mask = torch.zeros(B, L, dtype=torch.long, device=dev)
    lab_t = torch.full((B, L), -100, dtype=torch.long, device=dev)
    for b, (r, lab) in enumerate(zip(rows, labels)):
        off = L - len(r)
        embeds[b, off:], mask[b, off:], lab_t[b, off:] = r, 1, lab
        starts[b] += off
        plens[b] += off
    return LLMInputs(embeds, mask, lab_t if answers is not None else None, starts, [visual.shape[1]] * B, plens)
