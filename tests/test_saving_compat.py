"""`.keras` files written by earlier versions load and train on.

`fixtures/pre_refactor_sam.keras` was saved by main at 0b43de8, before the
trainer restructure (`fixtures/make_pre_refactor_model.py`): FriendlySAM
(its moving average in the rule's variables), a polynomial rho schedule
and `num_batch_splits=2`, after 3 steps. Its weights at save time are in
`pre_refactor_sam.npz`.
"""

import pathlib

import keras
import numpy as np
import pytest

import keras_sam

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"

pytestmark = pytest.mark.multi_backend


def _load():
    return keras.saving.load_model(FIXTURES / "pre_refactor_sam.keras")


def test_pre_refactor_file_loads_every_value():
    model = _load()
    saved = np.load(FIXTURES / "pre_refactor_sam.npz")
    loaded = {
        w.path: keras.ops.convert_to_numpy(w.value) for w in model.weights
    }
    assert sorted(loaded) == sorted(saved.files)
    for path in saved.files:
        np.testing.assert_array_equal(loaded[path], saved[path], err_msg=path)
    # The rule's moving average was started by the first step.
    assert float(saved["rule_state/state_0"]) == 1.0


def test_pre_refactor_file_keeps_its_arguments_and_trains_on():
    model = _load()
    assert model.num_batch_splits == 2
    assert int(model.optimizer.iterations) == 3
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.integers(0, 3, size=8)
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    # PolynomialDecay(0.1, decay_steps=10, end=0.02) at step 3, closed form.
    expected_rho = 0.1 + (0.02 - 0.1) * 3 / 10
    np.testing.assert_allclose(history.history["rho"][0], expected_rho,
                               rtol=1e-6)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert all(np.isfinite(a).all() for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
    assert int(model.optimizer.iterations) == 4
    assert isinstance(model, keras_sam.SAMModel)


def test_variant_is_the_deprecated_name_of_rule():
    import importlib
    import sys

    sys.modules.pop("keras_sam.variants", None)
    with pytest.warns(DeprecationWarning, match="keras_sam.rules"):
        variants = importlib.import_module("keras_sam.variants")
    assert variants.GSAM is keras_sam.rules.GSAM
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.warns(DeprecationWarning, match="rule="):
        model = keras_sam.SAMModel(inner, variant=keras_sam.rules.GSAM(0.2))
    assert model.rule == keras_sam.rules.GSAM(alpha=0.2)
    assert "variant" not in model.get_config()
    with pytest.raises(ValueError, match="not both"):
        keras_sam.SAMModel(inner, rule=keras_sam.rules.SAM(),
                           variant=keras_sam.rules.SAM())
