"""A word-level tokenizer built offline from training text (for models trained from scratch).

The ``tiny`` preset's LLM is trained from scratch on SynthVQA, whose language is a few dozen
words; a word-level vocabulary keeps its embedding table tiny and every answer one or a few
tokens. It is built in milliseconds with the ``tokenizers`` library and saved as an ordinary HF
tokenizer, so checkpoints reload it with ``AutoTokenizer.from_pretrained(dir)``::

    tok = build_word_tokenizer(texts_of(records), extra_texts=["USER:", "ASSISTANT:"])
    tok.save_pretrained("ckpt/")
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN)


def texts_of(records: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Every conversation turn of LLaVA-format records (``conversations[*].value``)."""
    from meteor_cli.data.llava import conversation_turns

    for i, rec in enumerate(records):
        for _, value in conversation_turns(rec, i):
            yield value


def build_word_tokenizer(texts: Iterable[str], *, extra_texts: Iterable[str] = (), min_frequency: int = 1):
    """Train a lower-cased word-level tokenizer on ``texts`` and return a ``PreTrainedTokenizerFast``.

    Words are split on whitespace and punctuation; ``<image>`` is a special token (never split);
    ids 0..4 are ``<pad> <unk> <s> </s> <image>``. ``extra_texts`` (prompt template strings)
    are added so that every template word has an id even if the data never uses it.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=min_frequency)

    def corpus() -> Iterator[str]:
        yield from extra_texts
        for t in texts:
            yield t.replace(IMAGE_TOKEN, " ")

    tok.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=[IMAGE_TOKEN], clean_up_tokenization_spaces=False,
    )


def _backend_json(tokenizer: Any) -> dict[str, Any] | None:
    """The ``tokenizers`` JSON of a fast word-level tokenizer, or None for any other kind."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    data = json.loads(backend.to_str())
    return data if (data.get("model") or {}).get("type") == "WordLevel" else None


def is_word_level(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is a word-level tokenizer (one id per word, unknown words → ``<unk>``)."""
    return _backend_json(tokenizer) is not None


def unknown_words(tokenizer: Any, texts: Iterable[str]) -> list[str]:
    """Words of ``texts`` a word-level ``tokenizer`` maps to ``<unk>``, in first-seen order.

    Words are what the tokenizer itself sees (after its normaliser and pre-tokenizer, so
    lower-cased and split at punctuation). Subword tokenizers have no unknown words: ``[]``.
    """
    if not is_word_level(tokenizer):
        return []
    backend = tokenizer.backend_tokenizer
    vocab = set(tokenizer.get_vocab())
    seen: dict[str, None] = {}
    for text in texts:
        text = text.replace(IMAGE_TOKEN, " ")
        norm = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(norm):
            if word not in vocab:
                seen.setdefault(word, None)
    return list(seen)


def extend_word_tokenizer(tokenizer: Any, words: Iterable[str]):
    """A copy of the word-level ``tokenizer`` with ``words`` appended to its vocabulary.

    Existing ids are unchanged; the new words get ids ``len(tokenizer)``, ``+1``, … in order,
    so an embedding table grown by ``len(words)`` rows lines up with them.
    """
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = _backend_json(tokenizer)
    if data is None:
        raise ValueError("only word-level tokenizers can be extended with new words")
    vocab: dict[str, int] = data["model"]["vocab"]
    next_id = max([*vocab.values(), *(t["id"] for t in data.get("added_tokens") or [])], default=-1) + 1
    if next_id != len(tokenizer):
        raise ValueError(f"tokenizer ids are not contiguous (next id {next_id}, {len(tokenizer)} tokens)")
    for w in words:
        if w not in vocab:
            vocab[w] = next_id
            next_id += 1
    backend = Tokenizer.from_str(json.dumps(data))
    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                if getattr(tokenizer, k, None) is not None}
    # transformers 5 calls them extra_special_tokens, 4.x additional_special_tokens.
    extra = getattr(tokenizer, "extra_special_tokens", None) or getattr(tokenizer, "additional_special_tokens", None)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials, additional_special_tokens=list(extra or []),
                                   clean_up_tokenization_spaces=False)
