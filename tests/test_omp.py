"""anvm_stats._omp: the OpenMP wait policy is set only before torch loads and never over a user's choice."""

import json
import os
import subprocess
import sys

import pytest

from anvm_stats import _omp


@pytest.fixture
def clean_env(monkeypatch):
    for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "ANVM_KEEP_OMP"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_sets_spincount_only_before_torch_and_never_over_the_user(clean_env):
    assert not _omp.set_wait_policy()                      # torch is loaded in this process: too late
    assert "GOMP_SPINCOUNT" not in os.environ
    clean_env.delitem(sys.modules, "torch")
    assert _omp.set_wait_policy() and os.environ["GOMP_SPINCOUNT"] == _omp.SPINCOUNT
    clean_env.setenv("GOMP_SPINCOUNT", "7")
    assert not _omp.set_wait_policy() and os.environ["GOMP_SPINCOUNT"] == "7"
    clean_env.delenv("GOMP_SPINCOUNT")
    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not _omp.set_wait_policy() and "GOMP_SPINCOUNT" not in os.environ
    clean_env.delenv("OMP_WAIT_POLICY")
    clean_env.setenv("ANVM_KEEP_OMP", "1")
    assert not _omp.set_wait_policy() and "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.parametrize("env,expected", [({}, _omp.SPINCOUNT), ({"GOMP_SPINCOUNT": "5"}, "5")])
def test_a_fresh_process_importing_anvm_stats_first(env, expected):
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "ANVM_KEEP_OMP")}
    code = "import anvm_stats, os, json; print(json.dumps(anvm_stats._omp.omp_settings()))"
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         check=True).stdout
    settings = json.loads(out)
    assert settings["GOMP_SPINCOUNT"] == expected
    assert settings["set_by_anvm_stats"] is (not env)
