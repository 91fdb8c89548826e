import logging

import numpy as np
import pytest

from turbopi_ros.policy.tokenizer import (ByteTokenizer, PaligemmaTokenizer, discretize_state, make_tokenizer,
                                          pi05_prompt)


def test_pi0_format_bytes():
    tok = ByteTokenizer(vocab_size=1024, max_len=16)
    tokens, mask = tok.encode("  pick_up\nit ")
    text = "pick up it"
    expected = [2] + [3 + b for b in text.encode()] + [3 + ord("\n")]
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape == (16,)
    assert tokens[: len(expected)].tolist() == expected
    assert mask.sum() == len(expected) and not mask[len(expected):].any() and not tokens[len(expected):].any()


def test_pi05_format_puts_the_discretized_state_in_the_prompt():
    state = np.array([-1.0, 0.0, 0.999, 1.0, -0.5])
    assert discretize_state(state).tolist() == [0, 128, 255, 255, 64]
    assert pi05_prompt("open the drawer", state) == "Task: open the drawer, State: 0 128 255 255 64;\nAction: "
    tok = ByteTokenizer(vocab_size=300, max_len=200)
    tokens, mask = tok.encode("open the drawer", state=state)
    assert mask.sum() == 1 + len(pi05_prompt("open the drawer", state).encode())
    assert tokens.max() < 300


def test_truncation_warns(caplog):
    tok = ByteTokenizer(vocab_size=1024, max_len=8)
    with caplog.at_level(logging.WARNING):
        tokens, mask = tok.encode("a long instruction")
    assert mask.all() and "truncated" in caplog.text


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt_is_an_error(prompt):
    with pytest.raises(ValueError, match="prompt is empty"):
        ByteTokenizer(vocab_size=1024, max_len=8).encode(prompt)


def test_nan_state_is_an_error():
    with pytest.raises(ValueError, match="finite"):
        ByteTokenizer(vocab_size=1024, max_len=64).encode("go", state=np.array([np.nan]))


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    import sentencepiece

    d = tmp_path_factory.mktemp("sp")
    corpus = d / "corpus.txt"
    lines = ["pick up the red cup", "open the top drawer", "put the sponge in the sink", "fold the towel",
             "Task: wipe the table, State: 1 2 3;", "Action: move the arm left"] * 40
    corpus.write_text("\n".join(lines))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "tiny"), vocab_size=60,
                                             model_type="bpe", bos_id=2, eos_id=1, unk_id=3, pad_id=0,
                                             minloglevel=2)
    return d / "tiny.model"


def test_sentencepiece_pi0_format(sentencepiece_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    tok = PaligemmaTokenizer(sentencepiece_model, max_len=48)
    tokens, mask = tok.encode("pick_up the red cup")
    expected = sp.encode("pick up the red cup", add_bos=True) + sp.encode("\n")
    assert expected[0] == 2
    assert tokens[mask].tolist() == expected


def test_sentencepiece_pi05_format(sentencepiece_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    state = np.array([0.1, -0.2])
    tokens, mask = make_tokenizer(str(sentencepiece_model), 200, 1024).encode("fold the towel", state=state)
    assert tokens[mask].tolist() == sp.encode(pi05_prompt("fold the towel", state), add_bos=True)


def test_bad_tokenizer_files(tmp_path, sentencepiece_model):
    with pytest.raises(ValueError, match="file not found"):
        PaligemmaTokenizer(tmp_path / "missing.model", 48)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        PaligemmaTokenizer(junk, 48)
    with pytest.raises(ValueError, match="the model's vocabulary is 10"):
        make_tokenizer(str(sentencepiece_model), 48, vocab_size=10)
    assert isinstance(make_tokenizer("", 48, 1024), ByteTokenizer)
