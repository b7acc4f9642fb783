import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from workbench.model import load_model


@pytest.fixture(scope="session")
def english():
    return load_model("english")


@pytest.fixture(scope="session")
def circuits():
    return load_model("circuits")


@pytest.fixture(scope="session")
def answer_key():
    """The constructed model: its mechanism is known exactly (previous-token head L0H0 feeding induction head L1H0)."""
    return load_model("answer-key")


@pytest.fixture(scope="session", params=["english", "circuits"])
def shipped(request, english, circuits):
    return {"english": english, "circuits": circuits}[request.param]
