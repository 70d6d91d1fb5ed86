"""`perturb=` values through `serialize_perturb` and `check_perturb`."""

import json

import keras
import pytest

from keras_sam import perturbed_subset


class RMSNormalization(keras.layers.Layer):
    """Unregistered, and named like a `keras.layers` class (as Gemma's
    own normalization layer in KerasHub is)."""


@keras.saving.register_keras_serializable(package="keras_sam_tests")
class RegisteredNorm(keras.layers.Layer):
    pass


def round_trip(perturb):
    config = json.loads(json.dumps(
        perturbed_subset.serialize_perturb(perturb)
    ))
    return config, perturbed_subset.check_perturb(config)


@pytest.mark.skipif(not hasattr(keras.layers, "RMSNormalization"),
                    reason="needs keras.layers.RMSNormalization")
def test_unregistered_class_is_saved_by_import_path_not_by_name():
    config, restored = round_trip((RMSNormalization,))
    assert restored == (RMSNormalization,)
    assert restored[0] is not keras.layers.RMSNormalization
    assert config["layer_classes"] == [
        f"{__name__}:RMSNormalization"
    ]


def test_keras_and_registered_classes_keep_their_names():
    classes = (keras.layers.LayerNormalization, RegisteredNorm)
    config, restored = round_trip(classes)
    # The names configs saved before the import-path form still load.
    assert config["layer_classes"] == [
        "LayerNormalization", "keras_sam_tests>RegisteredNorm"
    ]
    assert restored == classes
