"""raycl.checks: a wrong type is a TypeError, a wrong value a ValueError, both naming the
parameter and what it accepts; and raycl's constructors follow that rule."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from raycl.checks import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_optional_int,
    check_rate,
    check_seed,
)


def _message(error: type[Exception], call) -> str:
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- check_int ----------------------------------------------------------------------------------
def test_check_int_returns_a_plain_int_and_accepts_numpy_integers():
    assert check_int("n", 3, minimum=1) == 3
    value = check_int("n", np.int64(7), minimum=1, maximum=7)
    assert value == 7 and type(value) is int
    assert check_int("n", -5) == -5  # no bound given: any int


@pytest.mark.parametrize("value", [2.0, 2.5, "3", None, True, False, np.float64(2.0),
                                   torch.tensor(3)])
def test_check_int_wrong_type_is_a_type_error(value):
    message = _message(TypeError, lambda: check_int("hidden_size", value, minimum=1))
    assert message.startswith("hidden_size must be an int >= 1, got ")
    assert type(value).__name__ in message


def test_check_int_wrong_value_names_parameter_and_range():
    assert (_message(ValueError, lambda: check_int("hidden_size", 0, minimum=1))
            == "hidden_size must be an int >= 1, got 0")
    assert "an int in [0, 3]" in _message(ValueError, lambda: check_int("k", 4, 0, 3))
    assert "an int <= 3" in _message(ValueError, lambda: check_int("k", 4, maximum=3))
    assert check_int("k", 0, 0, 3) == 0 and check_int("k", 3, 0, 3) == 3  # bounds included


def test_check_optional_int_and_seed():
    assert check_optional_int("gpu_id", None, minimum=0) is None
    assert check_seed("seed", None) is None and check_seed("seed", np.int32(5)) == 5
    assert "seed must be None or an int >= 0" in _message(ValueError,
                                                          lambda: check_seed("seed", -1))
    assert "seed" in _message(TypeError, lambda: check_seed("seed", "1"))
    assert "seed" in _message(TypeError, lambda: check_seed("seed", True))
    assert "gpu_id" in _message(TypeError, lambda: check_optional_int("gpu_id", 0.0, minimum=0))


# ---- check_number -------------------------------------------------------------------------------
def test_check_number_accepts_reals_and_returns_a_float():
    for value in (0, 1, 0.5, np.float32(0.25), np.int64(1)):
        out = check_number("alpha", value, low=0.0, high=1.0)
        assert type(out) is float and out == float(value)


@pytest.mark.parametrize("value", [True, False, "0.5", None, [0.5], torch.tensor(0.5),
                                   complex(1, 0)])
def test_check_number_wrong_type_is_a_type_error(value):
    message = _message(TypeError, lambda: check_number("ewc_lambda", value, low=0.0))
    assert message.startswith("ewc_lambda must be a finite number >= 0, got ")


@pytest.mark.parametrize("low", [None, 0.0])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan"), 10 ** 400])
def test_check_number_rejects_nan_and_infinity_even_without_bounds(value, low):
    message = _message(ValueError, lambda: check_number("lr", value, low=low))
    assert message.startswith("lr must be a finite number")


def test_check_number_open_and_closed_bounds():
    assert check_number("x", 0.0, low=0.0) == 0.0
    assert "x must be a finite number > 0, got 0.0" == _message(
        ValueError, lambda: check_number("x", 0.0, low=0.0, low_open=True))
    assert check_number("x", 1, low=0, high=1) == 1.0
    assert "x must be a number in [0, 1), got 1" == _message(
        ValueError, lambda: check_number("x", 1, low=0, high=1, high_open=True))
    assert "x must be a number in (0, 1]" in _message(
        ValueError, lambda: check_number("x", -0.5, low=0, high=1, low_open=True))
    assert "x must be a finite number <= 2" in _message(
        ValueError, lambda: check_number("x", 3, high=2))


def test_check_rate():
    assert check_rate("drop_rate", 0) == 0.0 and check_rate("drop_rate", 0.99) == 0.99
    assert "drop_rate must be a number in [0, 1)" in _message(
        ValueError, lambda: check_rate("drop_rate", 1.0))
    assert "drop_rate" in _message(TypeError, lambda: check_rate("drop_rate", "0.5"))


# ---- check_choice / check_bool ------------------------------------------------------------------
def test_check_choice_value_and_type():
    assert check_choice("mode", "online", ("separate", "online")) == "online"
    assert check_choice("normalize", None, (None, "true")) is None
    assert check_choice("n_classes", np.int64(100), (10, 100)) == 100
    assert (_message(ValueError, lambda: check_choice("mode", "offline", ("separate", "online")))
            == "mode must be 'separate' or 'online', got 'offline'")
    assert "normalize must be None, 'true', 'pred' or 'all', got 5 (int)" == _message(
        TypeError, lambda: check_choice("normalize", 5, (None, "true", "pred", "all")))
    # True == 1 to Python, but a flag is no class count
    assert "n" in _message(TypeError, lambda: check_choice("n", True, (1, 10)))
    assert "n" in _message(ValueError, lambda: check_choice("n", 2, (1, 10)))


def test_check_bool():
    assert check_bool("download", False) is False
    assert "download must be True or False" in _message(TypeError,
                                                        lambda: check_bool("download", 1))


def test_long_values_are_shortened_in_messages():
    message = _message(TypeError, lambda: check_int("size", list(range(1000)), minimum=1))
    assert len(message) < 200 and message.startswith("size must be an int >= 1")


def test_checks_import_nothing_from_raycl_nor_torch():
    code = ("import sys, raycl.checks; "
            "bad = [m for m in sys.modules if m == 'torch' or "
            "(m.startswith('raycl.') and m != 'raycl.checks')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- the rule across raycl's constructors -------------------------------------------------------
def _naive(**kwargs):
    from raycl.training import Naive

    model = nn.Linear(2, 2)
    return Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def _plugin(name: str):
    import raycl.plugins

    return getattr(raycl.plugins, name)


def _evaluation(name: str):
    import raycl.evaluation

    return getattr(raycl.evaluation, name)


def _model(name: str):
    import raycl.models

    return getattr(raycl.models, name)


WRONG_TYPES = [
    (lambda: _model("SimpleMLP")(hidden_size="8"), "hidden_size"),
    (lambda: _model("SimpleMLP")(hidden_layers=True), "hidden_layers"),
    (lambda: _model("SimpleMLP")(drop_rate="0.1"), "drop_rate"),
    (lambda: _model("SimpleCNN")(in_channels=1.0), "in_channels"),
    (lambda: _model("MultiHeadClassifier")(4.0), "in_features"),
    (lambda: _model("ResNet18Reduced")(nf=None), "nf"),
    (lambda: _naive(train_mb_size=True), "train_mb_size"),
    (lambda: _naive(train_epochs=1.0), "train_epochs"),
    (lambda: _plugin("ReplayPlugin")(mem_size=10.0), "mem_size"),
    (lambda: _plugin("GEMPlugin")(10, "0.5"), "memory_strength"),
    (lambda: _plugin("AGEMPlugin")(10, sample_size="5"), "sample_size"),
    (lambda: _plugin("RWalkPlugin")(delta_t=2.0), "delta_t"),
    (lambda: _plugin("EWCPlugin")("1.0"), "ewc_lambda"),
    (lambda: _plugin("EWCPlugin")(1.0, mode=None), "mode"),
    (lambda: _plugin("LwFPlugin")(alpha="1"), "alpha"),
    (lambda: _plugin("SynapticIntelligencePlugin")([1.0, "2"]), "si_lambda"),
    (lambda: _plugin("CoPEPlugin")(n_classes=10.0), "n_classes"),
    (lambda: _evaluation("InteractiveLogger")(width=1.5), "width"),
    (lambda: _evaluation("confusion_matrix_metrics")(normalize=1), "normalize"),
    (lambda: _evaluation("gpu_usage_metrics")(gpu_id="0", epoch=True), "gpu_id"),
]

WRONG_VALUES = [
    (lambda: _model("SimpleMLP")(hidden_size=0), "hidden_size"),
    (lambda: _naive(eval_every=-2), "eval_every"),
    (lambda: _plugin("GEMPlugin")(10, math.inf), "memory_strength"),
    (lambda: _plugin("EWCPlugin")(math.nan), "ewc_lambda"),
    (lambda: _plugin("EWCPlugin")(1.0, fisher="exact"), "fisher"),
    (lambda: _plugin("RWalkPlugin")(ewc_alpha=1.5), "ewc_alpha"),
    (lambda: _plugin("CoPEPlugin")(T=0.0), "T"),
    (lambda: _evaluation("InteractiveLogger")(every=-1.0), "every"),
    (lambda: _evaluation("ram_usage_metrics")(every=math.nan, epoch=True), "every"),
]


@pytest.mark.parametrize("make, name", WRONG_TYPES)
def test_constructors_raise_type_error_for_a_wrong_type(make, name):
    assert name in _message(TypeError, make)


@pytest.mark.parametrize("make, name", WRONG_VALUES)
def test_constructors_raise_value_error_for_a_wrong_value(make, name):
    assert name in _message(ValueError, make)


def test_benchmark_generators_follow_the_rule():
    from raycl.benchmarks import nc_benchmark

    x, y = torch.randn(8, 2), torch.arange(4).repeat(2)
    assert "seed" in _message(TypeError, lambda: nc_benchmark((x, y), (x, y), 2, seed="0"))
    assert "seed" in _message(ValueError, lambda: nc_benchmark((x, y), (x, y), 2, seed=-1))
    assert "n_experiences" in _message(TypeError, lambda: nc_benchmark((x, y), (x, y), True))
    bench = nc_benchmark((x, y), (x, y), np.int64(2), seed=np.int64(0))  # numpy ints accepted
    assert len(bench.train_stream) == 2
