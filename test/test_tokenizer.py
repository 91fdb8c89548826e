import logging

import numpy as np
import pytest

from turbopi_ros.policy.tokenizer import (ByteTokenizer, PaligemmaTokenizer, discretize_state, make_tokenizer,
                                          pi05_prompt)


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A tiny SentencePiece model trained on the spot, set up like PaliGemma's: <pad>=0, <eos>=1, <bos>=2, "\\n" a
    piece of its own, no dummy prefix."""
    import sentencepiece

    d = tmp_path_factory.mktemp("sp")
    corpus = d / "corpus.txt"
    lines = ["pick up the red cup", "open the top drawer", "put the sponge in the sink", "fold the towel",
             "Task: wipe the table, State: 1 2 3;", "Action: move the arm left"] * 40
    corpus.write_text("\n".join(lines))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "tiny"), vocab_size=80,
                                             model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                             user_defined_symbols=["\n"], add_dummy_prefix=False,
                                             remove_extra_whitespaces=False, minloglevel=2)
    path = d / "tiny.model"
    return path, sentencepiece.SentencePieceProcessor(model_file=str(path))


def test_pi0_format_with_sentencepiece(sp_model):
    path, sp = sp_model
    tok = PaligemmaTokenizer(path, max_len=48)
    tokens, mask = tok.encode("  pick_up the\nred cup ")
    newline = sp.piece_to_id("\n")
    expected = [2] + sp.encode("pick up the red cup") + [newline]  # BOS, cleaned prompt, "\n" on its own
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape == (48,)
    assert tokens[: len(expected)].tolist() == expected
    assert mask[: len(expected)].all() and not mask[len(expected):].any() and not tokens[len(expected):].any()
    assert tok.vocab_size == 80


def test_pi05_format_with_sentencepiece(sp_model):
    path, sp = sp_model
    state = np.array([0.1, -0.2, -1.0, 0.999])  # bins 140, 102, 0, 255
    tokens, mask = make_tokenizer(str(path), 200, 1024, variant="pi05").encode("fold_the towel", state=state)
    expected = sp.encode("Task: fold the towel, State: 140 102 0 255;\nAction: ", add_bos=True)
    assert expected[0] == 2
    assert tokens[mask].tolist() == expected and mask[: len(expected)].all()


def test_discretize_state_is_openpis_binning():
    # np.digitize over linspace(-1, 1, 257)[:-1], minus 1: bin i covers [-1 + i/128, -1 + (i+1)/128)
    edges = -1 + np.arange(256) / 128
    assert discretize_state(edges).tolist() == list(range(256))
    assert discretize_state(edges[1:] - 1e-9).tolist() == list(range(255))
    # outside [-1, 1] openpi does not clip: below -1 gives -1, at or above 1 gives 255
    assert discretize_state(np.array([-1.5, -1.0 - 1e-12, 1.0, 3.0])).tolist() == [-1, -1, 255, 255]
    assert pi05_prompt("open it", np.array([-2.0, 0.0])) == "Task: open it, State: -1 128;\nAction: "
    float32_state = np.array([0.1, -0.7], dtype=np.float32)
    assert discretize_state(float32_state).tolist() == discretize_state(float32_state.astype(np.float64)).tolist()


def test_byte_tokenizer_formats_and_range():
    tok = ByteTokenizer(vocab_size=1024, max_len=16)
    tokens, mask = tok.encode("  pick_up\nit ")
    expected = [2] + [3 + b for b in b"pick up it"] + [3 + ord("\n")]
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape == (16,)
    assert tokens[mask].tolist() == expected and not tokens[~mask].any()
    state = np.array([0.0, 1.0])
    tokens, mask = ByteTokenizer(vocab_size=1024, max_len=200).encode("go", state=state)
    assert tokens[mask].tolist() == [2] + [3 + b for b in b"Task: go, State: 128 255;\nAction: "]
    small = ByteTokenizer(vocab_size=10, max_len=64)
    tokens, mask = small.tokenize("caf\u00e9 \u2615")  # openpi's method name works too
    assert mask.sum() == 1 + len("caf\u00e9 \u2615".encode()) + 1
    assert tokens[0] == 2 and 3 <= tokens[mask][1:].min() and tokens[mask].max() < 10


def test_truncation_warns_and_keeps_the_first_tokens(caplog, sp_model):
    with caplog.at_level(logging.WARNING, logger="turbopi_ros.policy.tokenizer"):
        tokens, mask = ByteTokenizer(vocab_size=1024, max_len=8).encode("a long instruction")
    assert mask.all() and tokens.tolist() == [2] + [3 + b for b in b"a long "]
    assert "more than max_token_len 8: truncated" in caplog.text
    path, sp = sp_model
    tokens, mask = PaligemmaTokenizer(path, max_len=3).encode("put the sponge in the sink")
    assert mask.all() and tokens.tolist() == [2] + sp.encode("put the sponge in the sink")[:2]


def test_exactly_max_len_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING):
        tokens, mask = ByteTokenizer(vocab_size=1024, max_len=4).encode("ab")  # BOS a b \n
    assert mask.all() and caplog.text == ""


@pytest.mark.parametrize("prompt", ["", "   ", "\n", " _ "])
def test_empty_prompt_is_an_error(prompt):
    with pytest.raises(ValueError, match="prompt is empty"):
        ByteTokenizer(vocab_size=1024, max_len=8).encode(prompt)


def test_bad_inputs_name_the_problem():
    tok = ByteTokenizer(vocab_size=1024, max_len=64)
    with pytest.raises(ValueError, match=r"non-finite values at \[1\]"):
        tok.encode("go", state=np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="1-D vector"):
        tok.encode("go", state=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="prompt must be a string"):
        tok.encode(None)
    with pytest.raises(ValueError, match="a state is required"):
        ByteTokenizer(1024, 64, variant="pi05").encode("go")
    with pytest.raises(ValueError, match="pass state=None"):
        ByteTokenizer(1024, 64, variant="pi0").encode("go", state=np.zeros(2))
    with pytest.raises(ValueError, match="variant must be one of"):
        ByteTokenizer(1024, 64, variant="pi1")
    with pytest.raises(ValueError, match="max_len must be positive"):
        ByteTokenizer(1024, 0)
    with pytest.raises(ValueError, match="vocab_size must be at least 4"):
        ByteTokenizer(3, 8)


def test_bad_tokenizer_files(tmp_path, sp_model):
    with pytest.raises(ValueError, match="missing.model: file not found"):
        PaligemmaTokenizer(tmp_path / "missing.model", 48)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="junk.model: not a SentencePiece model"):
        PaligemmaTokenizer(junk, 48)
    with pytest.raises(ValueError, match="80 pieces but the model's vocabulary is 10"):
        make_tokenizer(str(sp_model[0]), 48, vocab_size=10)
    assert isinstance(make_tokenizer("", 48, 1024), ByteTokenizer)
    assert isinstance(make_tokenizer(str(sp_model[0]), 48, 1024), PaligemmaTokenizer)
