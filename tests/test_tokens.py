import pytest

from workbench.tokens import token_views, unique_labels


def _views(model, text):
    return token_views(model.tokenizer, model.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_spaces_and_newlines_are_visible(english):
    views = _views(english, "Hello world\n\nend")
    labels = [v.label for v in views]
    assert "␣world" in labels and "↵" in "".join(labels)
    assert "".join(v.text for v in views) == "Hello world\n\nend"


def test_split_characters_show_as_bytes_and_join_back(english):
    text = "雪🙂"
    views = _views(english, text)
    assert len(views) > 2  # each character is several byte tokens in a 4k English vocabulary
    partial = [v for v in views if v.text is None]
    assert partial and all(v.label.startswith("⟨") for v in partial)
    assert b"".join(v.raw for v in views).decode("utf-8") == text


def test_special_tokens_keep_their_names(english):
    (view,) = token_views(english.tokenizer, [english.bos_id])
    assert view.special and view.label == "<|endoftext|>"


def test_unique_labels_number_positions():
    assert unique_labels(["a", "a"]) == ["0: a", "1: a"]


def test_unknown_words_are_those_a_word_level_vocabulary_reads_as_unk(english):
    from transformers import AutoTokenizer

    from workbench.model import MODELS_DIR
    from workbench.tokens import unknown_words

    words = AutoTokenizer.from_pretrained(MODELS_DIR / "stories")
    text = "Erin met a whale, and the whale met Erin"
    # the reference: which of the text's words the vocabulary lists, read off the vocabulary itself
    vocab = words.get_vocab()
    expected = [w for w in dict.fromkeys(text.replace(",", " ").split()) if w not in vocab and "Ġ" + w not in vocab]
    assert unknown_words(words, text) == expected == ["whale"]
    assert unknown_words(words, "Erin and Vernon went to the park.") == []
    # a byte-level vocabulary has no unknown words, its end-of-text token typed literally included
    assert unknown_words(english.tokenizer, "a whale <|endoftext|> 雪") == []


def test_a_typed_token_the_vocabulary_lacks_is_refused_not_read_as_unk():
    from transformers import AutoTokenizer

    from workbench.errors import InputError
    from workbench.model import MODELS_DIR
    from workbench.tokens import single_token_id

    words = AutoTokenizer.from_pretrained(MODELS_DIR / "stories")
    assert single_token_id(words, " Erin") == words.convert_tokens_to_ids("ĠErin")
    with pytest.raises(InputError, match="not in the model's vocabulary"):
        single_token_id(words, " unquestionably")
