"""Tokenizers: the built-in byte tokenizer and the optional real-tokenizer loaders."""
from __future__ import annotations

import sys

import pytest

from samba_ext.tokenizer import ByteTokenizer, load_tokenizer


def test_byte_roundtrip_unicode():
    tok = ByteTokenizer()
    text = "The pass key is 71432. Ünïcödé ✓ 漢字 🙂\n\ttabs"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_byte_specials():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id, tok.bos_id, tok.pad_id) == (259, 256, 257, 258)
    ids = [tok.bos_id] + tok.encode("hi") + [tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "hi"          # specials are skipped


def test_byte_invalid_utf8_is_replaced():
    tok = ByteTokenizer()
    # a lone continuation byte and a truncated 3-byte sequence
    out = tok.decode([0x41, 0x80, 0x42, 0xE6, 0xBC])
    assert out.startswith("A\ufffdB") and out.endswith("\ufffd")


def test_byte_encode_type_error():
    with pytest.raises(TypeError, match="str"):
        ByteTokenizer().encode(b"bytes")


def test_load_tokenizer_byte_and_errors(tmp_path):
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert isinstance(load_tokenizer(None), ByteTokenizer)
    with pytest.raises(ValueError, match="no such file"):
        load_tokenizer(str(tmp_path / "nope.json"))
    (tmp_path / "weird.txt").write_text("x")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "weird.txt")
    with pytest.raises(ValueError, match="neither"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("fname,module", [("tokenizer.json", "tokenizers"),
                                          ("tokenizer.model", "sentencepiece")])
def test_missing_optional_package_message(tmp_path, monkeypatch, fname, module):
    (tmp_path / fname).write_bytes(b"{}")
    monkeypatch.setitem(sys.modules, module, None)     # makes `import module` fail
    with pytest.raises(ImportError, match=f"pip install {module}"):
        load_tokenizer(tmp_path / fname)
    # a directory holding the file resolves to it (same message)
    with pytest.raises(ImportError, match=module):
        load_tokenizer(tmp_path)


def test_hf_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, "<s>": 2, "hello": 3, "world": 4}
    t = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.add_special_tokens(["</s>", "<s>"])
    t.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.encode("hello world hello") == [3, 4, 3]
    assert tok.eos_id == 1 and tok.bos_id == 2 and tok.vocab_size == 5
    assert tok.decode([3, 1, 4]).split() == ["hello", "world"]
