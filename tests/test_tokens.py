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
