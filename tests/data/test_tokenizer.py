"""The offline word-level tokenizer: vocabulary, special tokens, save → reload."""

from __future__ import annotations

from meteor_cli.data.synthvqa import make_item
from meteor_cli.data.tokenizer import IMAGE_TOKEN, SPECIAL_TOKENS, build_word_tokenizer, texts_of


def test_build_save_reload(tmp_path):
    from transformers import AutoTokenizer

    records = [{"conversations": [{"from": "human", "value": f"<image>\n{it.question}"},
                                  {"from": "gpt", "value": it.answer}]}
               for it in (make_item(0, "train", i) for i in range(64))]
    tok = build_word_tokenizer(texts_of(records), extra_texts=["USER: ASSISTANT:"])
    assert [tok.convert_ids_to_tokens(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    assert len(tok) < 150  # a word-level vocabulary of SynthVQA stays tiny
    text = f"USER: {IMAGE_TOKEN}\nWhat color is the Circle? ASSISTANT:"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) in ids and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "user : what color is the circle ? assistant :"
    tok.save_pretrained(tmp_path / "tok")
    back = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert back(text, add_special_tokens=False)["input_ids"] == ids and back.pad_token_id == 0
    assert tok("zebra", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
