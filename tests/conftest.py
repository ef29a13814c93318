"""Test-session set-up: warm starts cached by `train` go to a temporary folder, not the user's ~/.cache."""
import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    old = os.environ.get("RL_VF_CACHE")
    os.environ["RL_VF_CACHE"] = str(tmp_path_factory.mktemp("rl_vf_cache"))  # inherited by spawned runs too
    yield
    if old is None:
        del os.environ["RL_VF_CACHE"]
    else:
        os.environ["RL_VF_CACHE"] = old
