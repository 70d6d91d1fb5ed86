"""The tf-keras (Keras 2) twin of a `keras_sam.models` network (private).

`benchmarks/step_time.py` times `SAMModel` against tf-keras's own
`tf_keras.models.experimental.SharpnessAwareMinimization` on the same
architecture. `keras_sam.models` builds Keras 3 models only; `tf_keras_twin`
reads the functional graph of one of them from its `get_config()` and
makes every layer again with the tf-keras class of the same name and the
same settings, wired the same way. The networks of `keras_sam.models` use
standard layers only (convolution, BatchNorm, pooling, padding, `Permute`,
`Add`, `Dense`, `Activation`, `Dropout`), which both libraries have; the
custom layers of Shake-Shake and ShakeDrop have no tf-keras twin.

Layer names and weight order are the same as in the Keras 3 model, so
`twin.set_weights(model.get_weights())` gives both the same weights.
"""

import inspect

# Arguments of every Keras layer's constructor, on top of its own.
_BASE_LAYER_ARGUMENTS = ("name", "trainable", "dtype")


def tf_keras_twin(model, tf_keras):
    """The functional `model` rebuilt with tf-keras layers.

    Args:
        model: a functional Keras 3 `keras.Model` made of standard layers,
            e.g. from `keras_sam.models.get_model`.
        tf_keras: the `tf_keras` module.

    Returns:
        A `tf_keras.Model` with the same layers (names, settings, wiring)
        and weights in the same order (freshly initialized).

    Raises:
        ValueError: when a layer has no tf-keras class of the same name
            (a custom layer, such as `keras_sam.models.ShakeShake`).
    """
    config = model.get_config()
    tensors = {}
    for layer_config in config["layers"]:
        name = layer_config["name"]
        layer = _twin_layer(tf_keras, layer_config)
        if layer_config["class_name"] == "InputLayer":
            tensors[name] = layer
            continue
        (node,) = layer_config["inbound_nodes"]
        args = _resolve(node["args"], tensors)
        kwargs = _resolve(node["kwargs"], tensors)
        tensors[name] = layer(*args, **kwargs)
    return tf_keras.Model(
        _endpoints(config["input_layers"], tensors),
        _endpoints(config["output_layers"], tensors),
        name=config["name"],
    )


def twin_difference(model, twin, x):
    """How far `twin` computes from `model` on the batch `x`.

    Args:
        model: the Keras 3 model.
        twin: its twin (`tf_keras_twin(model, library)`) holding the same
            weights.
        x: a NumPy batch of inputs.

    Returns:
        A dict of floats: `outputs`, the largest absolute difference of
        the inference-mode outputs over the largest absolute output, and
        `regularization`, the relative difference of the regularization
        losses (0 when both have none).
    """
    import numpy as np

    expected = np.asarray(model(x, training=False), np.float64)
    actual = np.asarray(twin(x, training=False), np.float64)
    scale = max(np.abs(expected).max(), 1e-30)
    expected_loss = float(sum(np.asarray(v) for v in model.losses))
    actual_loss = float(sum(np.asarray(v) for v in twin.losses))
    return {
        "outputs": float(np.abs(actual - expected).max() / scale),
        "regularization": abs(actual_loss - expected_loss)
        / max(abs(expected_loss), 1e-30),
    }


def _endpoints(history, tensors):
    """The twin's inputs or outputs named by a functional config: one
    `[layer_name, node, index]`, or a list of them."""
    if isinstance(history[0], str):
        return tensors[history[0]]
    return [tensors[name] for name, _, _ in history]


def _twin_layer(tf_keras, layer_config):
    """The tf-keras layer (an `Input` tensor for `InputLayer`)."""
    class_name = layer_config["class_name"]
    settings = _twin_settings(tf_keras, layer_config["config"])
    if class_name == "InputLayer":
        return tf_keras.Input(
            shape=settings["batch_shape"][1:], name=settings["name"]
        )
    layer_class = getattr(tf_keras.layers, class_name, None)
    if layer_class is None or layer_config.get("registered_name") not in (
        None,
        class_name,
    ):
        raise ValueError(
            f"Layer {layer_config['name']!r} ({class_name}) has no tf-keras "
            "twin: only standard Keras layers can be rebuilt in tf-keras."
        )
    return layer_class(
        **_accepted(layer_class, settings, extra=_BASE_LAYER_ARGUMENTS)
    )


def _twin_settings(tf_keras, value):
    """Keras 3's serialized settings as tf-keras objects.

    A Keras 3 object (initializer, regularizer, constraint, dtype policy)
    is serialized as a dict with `module` (such as `"keras.initializers"`),
    `class_name` and `config`; it becomes the tf-keras object of that
    module and class, made from the arguments tf-keras's class accepts
    (Keras 3 records a few that Keras 2 does not have). A dtype policy
    becomes its name.
    """
    if isinstance(value, dict):
        if value.get("class_name") == "DTypePolicy":
            return value["config"]["name"]
        if "module" in value and "class_name" in value:
            module = getattr(tf_keras, value["module"].split(".")[-1])
            object_class = getattr(module, value["class_name"])
            return object_class(
                **_accepted(
                    object_class, _twin_settings(tf_keras, value["config"])
                )
            )
        return {
            key: _twin_settings(tf_keras, item) for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_twin_settings(tf_keras, item) for item in value)
    return value


def _accepted(object_class, settings, extra=()):
    """The entries of `settings` that `object_class(...)` accepts."""
    accepted = set(inspect.signature(object_class.__init__).parameters)
    accepted.update(extra)
    return {key: value for key, value in settings.items() if key in accepted}


def _resolve(value, tensors):
    """Replaces every serialized Keras tensor by the twin's tensor."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            layer_name, _, index = value["config"]["keras_history"]
            output = tensors[layer_name]
            return output[index] if isinstance(output, list) else output
        return {key: _resolve(item, tensors) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(item, tensors) for item in value)
    return value
