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


@pytest.fixture(scope="session", params=["english", "circuits"])
def shipped(request, english, circuits):
    return {"english": english, "circuits": circuits}[request.param]
