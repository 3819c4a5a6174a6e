"""Training a multi-encoder VLM on LLaVA-format data with the generic loop.

Images are decoded once and kept in memory as uint8 at the largest encoder resolution (cheap
for SynthVQA-sized sets, and it keeps the CPU busy with the model rather than with PNG
decoding). Records with a missing or unreadable image are skipped and counted; records
without a ``gpt`` turn are rejected, naming their id.

Multi-turn records (LLaVA's instruction data has several human/gpt exchanges per image) train on
every exchange at once: the image is encoded once, the later questions follow the first answer
in the template's multi-turn format, and every answer is a loss target.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meteor_cli.data.llava import conversation_turns, iter_json_records, load_image, record_id, resolve_image
from meteor_cli.errors import InvalidInputError
from meteor_cli.pruning.estimate import image_tensor


Exchange = tuple[str, str]  # (question, answer)


@dataclass
class VLMData:
    images: torch.Tensor  # (N, 3, S, S) uint8
    prompts: list[str]
    answers: list[str]
    ids: list[str]
    n_failed: int = 0
    failed: list[str] = field(default_factory=list)
    #: Per record, the exchanges after the first (empty for single-turn records).
    turns: list[list[Exchange]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, str, list[Exchange]]:
        return self.images[i], self.prompts[i], self.answers[i], self.turns[i] if self.turns else []


def exchanges(rec: dict[str, Any], index: int) -> list[Exchange]:
    """Every (human question, gpt answer) pair of a record, in order; at least one.

    A human turn without a gpt answer after it (a trailing question) is dropped.
    """
    pairs: list[Exchange] = []
    question: str | None = None
    turns = conversation_turns(rec, index)  # a malformed conversation is a named error
    for speaker, value in turns:
        if speaker == "human":
            question = value
        elif speaker == "gpt" and question is not None:
            pairs.append((question, value))
            question = None
    if not pairs:
        speakers = {speaker for speaker, _ in turns}
        missing = "human" if "human" not in speakers else "gpt"
        raise InvalidInputError(f"record {record_id(rec, index)} has no {missing} turn",
                                "every training record needs a human question and a gpt answer")
    return pairs


def first_exchange(rec: dict[str, Any], index: int) -> Exchange:
    """The first human question and the gpt answer that follows it."""
    return exchanges(rec, index)[0]


def load_vlm_data(data: Path, image_root: Path, size: int, *, max_failed: float = 0.01, limit: int | None = None,
                  progress: Any = None, allow_outside_root: bool = False, to_tensor: Any = None) -> VLMData:
    """Images (uint8, ``size``² or as ``to_tensor(PIL image)`` squares them, e.g. ``vlm.image_tensor``) and conversations."""
    imgs, prompts, answers, ids, failed, turns = [], [], [], [], [], []
    n_seen = 0
    for i, rec in enumerate(iter_json_records(data)):
        if limit is not None and n_seen >= limit:
            break
        if not rec.get("image"):
            continue
        n_seen += 1
        (human, gpt), *later = exchanges(rec, i)
        try:
            im = load_image(resolve_image(rec, image_root, index=i, allow_outside_root=allow_outside_root))
        except OSError as exc:
            failed.append(record_id(rec, i))
            warnings.warn(f"skipping record {record_id(rec, i)}: {exc}", stacklevel=2)
            continue
        imgs.append(((to_tensor(im) if to_tensor is not None else image_tensor(im, size)) * 255).round().to(torch.uint8))
        prompts.append(human if "<image>" in human else "<image>\n" + human)
        answers.append(gpt)
        turns.append([(q.replace("<image>", "").strip(), a) for q, a in later])
        ids.append(record_id(rec, i))
        if progress is not None:
            progress(1)
    if not imgs:
        raise InvalidInputError(f"{data}: no usable image records", "check --data and --image-root")
    if len(failed) > max_failed * n_seen:
        raise InvalidInputError(f"{len(failed)} of {n_seen} images could not be read; first: {failed[:3]}",
                                "check --image-root, or raise --max-failed")
    return VLMData(torch.stack(imgs), prompts, answers, ids, len(failed), failed, turns)


class VLMTask:
    """The :class:`~meteor_cli.train.loop.TrainTask` of a MultiEncoderVLM."""

    def __init__(self, tokenizer: Any, template: str = "plain") -> None:
        self.tokenizer = tokenizer
        self.template = template

    def collate(self, samples: list[tuple[torch.Tensor, str, str, list[Exchange]]]) -> dict[str, Any]:
        from meteor_cli.model.llm import answer_ids

        imgs = torch.stack([s[0] for s in samples])
        answers = [s[2] for s in samples]
        turns = [list(s[3]) for s in samples]
        # The loss targets, counted exactly as build_inputs makes them (answer format + EOS).
        n = sum(len(answer_ids(self.tokenizer, self.template, a)) for a in answers)
        n += sum(len(answer_ids(self.tokenizer, self.template, a)) for t in turns for _, a in t)
        return {"images": imgs, "prompts": [s[1] for s in samples], "answers": answers, "turns": turns, "n": n}

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        return {**batch, "images": batch["images"].to(device).float() / 255.0}

    def count(self, batch: dict[str, Any]) -> int:
        return batch["n"]

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        turns = batch.get("turns")
        return model(batch["images"], batch["prompts"], batch["answers"], turns if turns and any(turns) else None)[0]

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        from meteor_cli.model.checkpoint import write_checkpoint_files

        write_checkpoint_files(model, directory)  # the loop makes the directory atomic

    def load(self, model: torch.nn.Module, directory: Path) -> None:
        from meteor_cli.model.checkpoint import read_weights

        model.load_state_dict(read_weights(directory), strict=False)
        if getattr(model.llm.config, "tie_word_embeddings", False):
            model.llm.tie_weights()


def extend_vocabulary(vlm: Any, texts: list[str], *, mode: str = "extend", seed: int = 0) -> list[str]:
    """Give the words of ``texts`` that ``vlm``'s word-level tokenizer lacks their own ids.

    Without this, fine-tuning a word-level model (``tiny-synthvqa``) on text with new words
    trains on ``<unk>`` in their place: the model can never say them. ``mode``:

    * ``"extend"``: append the words to the tokenizer and grow the LLM's input embedding and
      output head (``resize_token_embeddings``; the new rows are drawn around the mean of the
      existing ones, so the new words start out neither favoured nor ignored). The tokenizer
      saved with the model has the new words.
    * ``"refuse"``: an :class:`InvalidInputError` listing them.
    * ``"ignore"``: leave them as ``<unk>`` (the old behaviour).

    Subword tokenizers (real LLMs) have no unknown words: nothing happens. Returns the new words.
    """
    from meteor_cli.data.tokenizer import extend_word_tokenizer, unknown_words

    if mode not in ("extend", "refuse", "ignore"):
        raise ValueError(f"unknown mode {mode!r}")
    words = unknown_words(vlm.tokenizer, texts) if vlm.tokenizer is not None and mode != "ignore" else []
    if not words:
        return []
    shown = ", ".join(words[:20]) + (f", … ({len(words)} in all)" if len(words) > 20 else "")
    if mode == "refuse":
        raise InvalidInputError(f"the training data has {len(words)} word(s) the model's vocabulary lacks "
                                f"(they would all train as <unk>): {shown}",
                                "drop --unknown-words refuse to add them to the vocabulary and embeddings")
    tok = extend_word_tokenizer(vlm.tokenizer, words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vlm.llm.resize_token_embeddings(len(tok))
    vlm.tokenizer = tok
    return words
