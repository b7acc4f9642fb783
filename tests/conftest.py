import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# per-model results of the shipped models (cost.disk_cached) go to a fresh folder, not the user's ~/.cache
os.environ.setdefault("WORKBENCH_CACHE", tempfile.mkdtemp(prefix="workbench-cache-"))

import pytest

from workbench.model import load_model


@pytest.fixture(autouse=True)
def reference_speed(monkeypatch):
    """Gates decide at the reference machine's speed (cost.reference_calibration): no test depends on how busy this one is."""
    from workbench import cost

    monkeypatch.setattr(cost, "calibrate", cost.reference_calibration)


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
