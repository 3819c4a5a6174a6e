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
