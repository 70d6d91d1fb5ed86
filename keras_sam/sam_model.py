"""`SAMModel`: sharpness-aware training for any Keras model."""

import functools
import math
import numbers

import keras
from keras import ops

from keras_sam import backend as sam_backend
from keras_sam import perturbation as keras_ops_ascent

PERTURBATIONS = ("replica", "global")


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(keras.Model):
    """Wraps a Keras model and trains it with Sharpness-Aware Minimization.

    Each training step makes two passes over the batch (Foret et al., 2020):

    1. the clean pass at the weights `w` gives the loss `L(w)` and its
       gradient `g`; the ascent step is `eps = rho * g / ||g||`, the norm
       taken over all trainable variables together (with `adaptive=True`,
       ASAM's `eps = rho * T^2 g / ||T g||`, `T = |w| + eta`);
    2. the perturbed pass at `w + eps` gives the gradient that the
       optimizer applies to `w`.

    The perturbed pass is stateless: it reads `w + eps` as values and the
    non-trainable state (BatchNorm statistics, dropout seeds) as it was
    before the step, and its state updates are thrown away. So the weights
    are never moved and restored (nothing can drift), BatchNorm moving
    statistics are updated exactly once per step, from the clean pass, and
    dropout draws the same mask in both passes. Regularization losses
    (`kernel_regularizer`, `add_loss`) enter both passes; an optimizer's
    `weight_decay` is applied once, by the optimizer. With `rho=0` the
    step is exactly the plain optimizer step and costs one pass.

    Besides the compiled metrics (from the clean pass) and `loss` (the
    clean loss `L(w)`), `fit` logs `sam_sharpness`, the batch's
    `L(w + eps) - L(w)`, and `grad_norm`, `||g||`, both averaged over the
    epoch like `loss`. `evaluate` and `predict` are those of the wrapped
    model.

    Args:
        model: A `keras.Model` (Sequential, functional or subclassed, built
            or not, with any nesting of inputs and outputs).
        rho: Non-negative float, the radius of the neighbourhood in which
            the loss is maximized. Defaults to `0.05`.
        adaptive: Boolean, whether to use ASAM (Kwon et al., 2021), whose
            neighbourhood scales with the weights; use a larger `rho`
            (the ASAM paper uses 0.5 to 2.0 on CIFAR). Defaults to `False`.
        eta: Non-negative float, ASAM's offset in `T = |w| + eta`. Only
            used when `adaptive=True`. Defaults to `0.01`.
        num_batch_splits: `None` or a positive integer `k`. Splits each
            (per-replica) batch into `k` chunks of nearly equal size; each
            chunk gets its own `eps` from its own gradient (m-sharpness,
            `m = batch / k`) and the `k` descent gradients are averaged,
            weighted by chunk size, so the learning rate keeps its meaning.
            Each chunk's clean pass starts from the pre-step BatchNorm
            statistics, and the statistics move once, by the chunk-size
            weighted average of the `k` updates (for the moving mean this
            equals one update with the whole batch's mean). Defaults to
            `None` (one chunk).
        perturbation: `"replica"` or `"global"`. Under a
            `tf.distribute` strategy, `"replica"` lets each replica perturb
            with its own gradient, as the paper's 8-accelerator runs did;
            `"global"` all-reduces the first gradients before the norm (one
            extra all-reduce per step), which equals single-device SAM on
            the whole batch. Identical on one device. On JAX under
            `keras.distribution.DataParallel` the gradients are global
            (one SPMD program), so `"global"` applies whatever is set;
            `num_batch_splits=` the number of devices gives one
            perturbation per device's share. Defaults to `"replica"`.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Example:

    ```python
    inner = keras.Sequential([keras.Input((32, 32, 3)),
                              keras.layers.Conv2D(16, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10)])
    model = keras_sam.SAMModel(inner, rho=0.05)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=128, epochs=10)
    history.history["sam_sharpness"]
    ```

    References:
        - Foret et al., 2020. Sharpness-Aware Minimization for Efficiently
          Improving Generalization. https://arxiv.org/abs/2010.01412
        - Kwon et al., 2021. ASAM: Adaptive Sharpness-Aware Minimization
          for Scale-Invariant Learning of Deep Neural Networks.
          https://arxiv.org/abs/2102.11600
    """

    def __init__(
        self,
        model,
        rho=0.05,
        adaptive=False,
        eta=0.01,
        num_batch_splits=None,
        perturbation="replica",
        **kwargs,
    ):
        rho = _check_non_negative_float("rho", rho)
        eta = _check_non_negative_float("eta", eta)
        if not isinstance(model, keras.Model):
            raise ValueError(
                "Argument `model` must be a `keras.Model`. Received: "
                f"model={model!r} of type {type(model).__name__}."
            )
        if not isinstance(adaptive, bool):
            raise ValueError(
                "Argument `adaptive` must be a boolean. Received: "
                f"adaptive={adaptive!r}."
            )
        if num_batch_splits is not None:
            if isinstance(num_batch_splits, bool) or not isinstance(
                num_batch_splits, numbers.Integral
            ):
                raise ValueError(
                    "Argument `num_batch_splits` must be None or a positive "
                    f"integer. Received: num_batch_splits={num_batch_splits!r}."
                )
            if num_batch_splits < 1:
                raise ValueError(
                    "Argument `num_batch_splits` must be None or a positive "
                    f"integer. Received: num_batch_splits={num_batch_splits}."
                )
            num_batch_splits = int(num_batch_splits)
        if perturbation not in PERTURBATIONS:
            raise ValueError(
                f"Argument `perturbation` must be one of {PERTURBATIONS}. "
                f"Received: perturbation={perturbation!r}."
            )
        super().__init__(**kwargs)
        self.model = model
        self.rho = rho
        self.adaptive = adaptive
        self.eta = eta
        self.num_batch_splits = num_batch_splits
        self.perturbation = perturbation
        self.sharpness_tracker = keras.metrics.Mean(name="sam_sharpness")
        self.grad_norm_tracker = keras.metrics.Mean(name="grad_norm")
        if model.built:
            self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    # Training -------------------------------------------------------------

    def train_step(self, *args):
        """One SAM step; `(data)` on TensorFlow and torch, `(state, data)`
        on JAX, as the backend's trainer calls it."""
        return sam_backend.train_step(self, *args)

    def test_step(self, *args):
        return sam_backend.test_step(self, *args)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Called by Keras's TensorFlow trainer only; works around its
        # failure under MultiWorkerMirroredStrategy (see the backend).
        from keras_sam.backend import tensorflow as tf_backend

        local_batch = tf_backend.first_local_batch(self, iterator)
        if local_batch is not None:
            iterator, data_batch = None, local_batch
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )

    def sam_gradients(
        self,
        value_and_grad,
        trainable_values,
        non_trainable_values,
        metrics_values,
        x,
        y,
        sample_weight,
        scale_loss,
        reduce_gradients=None,
        num_replicas=1,
        global_rng=None,
        ascent=keras_ops_ascent,
        variables=None,
    ):
        """Runs both SAM passes on a batch, statelessly.

        Backend-neutral: autodiff comes in as `value_and_grad(fn)`, which
        returns a function `(trainable_values, *args) -> ((value, aux),
        gradients)` like `jax.value_and_grad(fn, has_aux=True)`;
        `reduce_gradients`, if given, all-reduces the clean gradients
        (global perturbation); `global_rng`, where a backend draws dropout
        masks from a global generator (unseeded layers on torch), has
        `get_state()` and `set_state(state)`, so that the perturbed pass
        replays the clean pass's draws; `ascent` supplies `global_norm`
        and `perturbed_weights` (default: `keras_sam.perturbation`, in
        `keras.ops`; a backend may pass faster equivalents); `variables`
        is `variable_lists()` if the caller has listed them already.

        Returns:
            A dict with `gradients` (to apply), `non_trainable` and
            `metrics` (the new values of the model's non-trainable and
            metrics variables, from the clean pass), `y_pred` (clean
            predictions), and the true scalars `loss`, `sam_sharpness` and
            `grad_norm` (undoing loss scaling and the `1 / num_replicas`
            factor of distributed losses).
        """
        one_pass = _SAMPass(
            self, value_and_grad, trainable_values, scale_loss,
            reduce_gradients, global_rng, ascent,
            variables or self.variable_lists(),
        )
        num_splits = self.num_batch_splits or 1
        if num_splits == 1:
            result = one_pass(
                non_trainable_values, metrics_values, (x, y, sample_weight)
            )
        else:
            result = self._split_passes(
                one_pass, num_splits, non_trainable_values, metrics_values,
                (x, y, sample_weight),
            )
        replicas = float(num_replicas)
        # In global mode the all-reduced gradient is already the mean.
        norm_factor = 1.0 if self.perturbation == "global" else replicas
        result["loss"] = result["loss"] * replicas
        result["sam_sharpness"] = result["sam_sharpness"] * replicas
        result["grad_norm"] = result["grad_norm"] * norm_factor
        return result

    def _split_passes(self, one_pass, num_splits, non_trainable_values,
                      metrics_values, batch):
        """m-sharpness: one SAM pass per chunk, combined by chunk size.

        Every chunk starts from the pre-step float state (BatchNorm
        statistics), whose new value is the size-weighted mean of the
        chunks' updates; integer state (seed counters) runs on from chunk
        to chunk, so that chunks draw different dropout masks; metrics run
        on too.
        """
        is_float = [_is_float(v) for v in one_pass.variables[1]]
        batch_size = ops.shape(_first_leaf(batch[0]))[0]
        counters, metrics = list(non_trainable_values), metrics_values
        weights, parts = [], []
        for index in range(num_splits):
            start = (index * batch_size) // num_splits
            stop = ((index + 1) * batch_size) // num_splits
            state = [
                snapshot if float_ else counter
                for snapshot, counter, float_ in zip(
                    non_trainable_values, counters, is_float
                )
            ]
            part = one_pass(state, metrics, _slice_batch(batch, start, stop))
            counters, metrics = part["non_trainable"], part["metrics"]
            weights.append(
                ops.cast(stop - start, "float32")
                / ops.cast(batch_size, "float32")
            )
            parts.append(part)

        def weighted_mean(values, like):
            total = sum(w * ops.cast(v, "float32")
                        for w, v in zip(weights, values))
            return ops.cast(total, like.dtype)

        last = parts[-1]
        return {
            "gradients": [
                weighted_mean([p["gradients"][i] for p in parts], g)
                for i, g in enumerate(last["gradients"])
            ],
            "non_trainable": [
                weighted_mean([p["non_trainable"][i] for p in parts], v)
                if float_ else v
                for i, (v, float_) in enumerate(
                    zip(last["non_trainable"], is_float)
                )
            ],
            "metrics": metrics,
            "y_pred": keras.tree.map_structure(
                lambda *chunks: ops.concatenate(chunks, axis=0),
                *[p["y_pred"] for p in parts],
            ),
            **{
                name: sum(w * p[name] for w, p in zip(weights, parts))
                for name in ("loss", "sam_sharpness", "grad_norm")
            },
        }

    def variable_lists(self):
        """`(trainable, non_trainable, metrics)` variables. Each listing
        walks the layer tree, which eager torch pays on every call: list
        once per step."""
        return (
            self.trainable_variables,
            self.non_trainable_variables,
            self.metrics_variables,
        )

    def _loss_and_updates(
        self,
        trainable_values,
        non_trainable_values,
        metrics_values,
        x,
        y,
        sample_weight,
        scale_loss,
        variables,
    ):
        """The training loss at the given values, with no side effects.

        `variables` is `variable_lists()`. Returns `(scaled_loss, (loss,
        y_pred, non_trainable, metrics))`, the last two being the values
        the variables would take.
        """
        trainable_variables, non_trainable_variables, metrics_variables = (
            variables
        )
        mapping = list(zip(trainable_variables, trainable_values))
        mapping += zip(non_trainable_variables, non_trainable_values)
        mapping += zip(metrics_variables, metrics_values)
        with _stateless_scope(mapping) as scope:
            y_pred = self(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                training=True,
            )
        non_trainable = [
            scope.get_current_value(v) for v in non_trainable_variables
        ]
        metrics = [scope.get_current_value(v) for v in metrics_variables]
        return scale_loss(loss), (loss, y_pred, non_trainable, metrics)

    def update_sam_metrics(self, x, y, sample_weight, result):
        """Updates `loss`, the compiled metrics and the SAM logs; returns
        the logs. Called by the backend step, statefully or inside a
        `StatelessScope`."""
        batch_size = ops.shape(_first_leaf(x))[0]
        if self._loss_tracker is not None:
            self._loss_tracker.update_state(
                result["loss"], sample_weight=batch_size
            )
        self.sharpness_tracker.update_state(
            result["sam_sharpness"], sample_weight=batch_size
        )
        self.grad_norm_tracker.update_state(
            result["grad_norm"], sample_weight=batch_size
        )
        return self.compute_metrics(
            x, y, result["y_pred"], sample_weight=sample_weight
        )

    def check_trainable(self):
        if not self.trainable_variables:
            raise ValueError(
                "SAMModel needs trainable weights to perturb, but the "
                f"wrapped model={self.model.name!r} has none (it has "
                f"{len(self.model.weights)} weights, all non-trainable)."
            )

    # Serialization --------------------------------------------------------

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "rho": self.rho,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "num_batch_splits": self.num_batch_splits,
            "perturbation": self.perturbation,
        }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        return cls(**config)


class _SAMPass:
    """The two SAM passes on one (chunk of a) batch, as a function of the
    state they start from. Returns a dict like `sam_gradients`', with the
    scalars as computed from the (possibly scaled) per-replica loss."""

    def __init__(self, model, value_and_grad, trainable_values, scale_loss,
                 reduce_gradients, global_rng, ascent, variables):
        self.model = model
        self.variables = variables
        self.loss_and_grads = value_and_grad(
            functools.partial(model._loss_and_updates, variables=variables)
        )
        self.trainable_values = trainable_values
        self.scale_loss = scale_loss
        self.reduce_gradients = reduce_gradients
        self.global_rng = global_rng
        self.ascent = ascent
        # The loss scale of a LossScaleOptimizer (1 otherwise).
        self.unit = ops.cast(scale_loss(ops.ones((), "float32")), "float32")

    def __call__(self, non_trainable_values, metrics_values, batch):
        model, rng = self.model, self.global_rng
        args = (non_trainable_values, metrics_values, *batch, self.scale_loss)
        if rng is not None:
            rng_before = rng.get_state()
        (_, aux), gradients = self.loss_and_grads(self.trainable_values, *args)
        loss, y_pred, new_state, new_metrics = aux
        if self.reduce_gradients is not None:
            gradients = self.reduce_gradients(gradients)
        norm = self.ascent.global_norm(gradients)
        grad_norm = norm / self.unit
        sharpness = ops.zeros(())
        if model.rho > 0.0:
            perturbed = self.ascent.perturbed_weights(
                gradients, self.trainable_values, model.rho,
                adaptive=model.adaptive, eta=model.eta, gradient_norm=norm,
            )
            if rng is not None:
                rng_after = rng.get_state()
                rng.set_state(rng_before)
            (_, perturbed_aux), gradients = self.loss_and_grads(
                perturbed, *args
            )
            if rng is not None:
                rng.set_state(rng_after)
            sharpness = perturbed_aux[0] - loss
        return {
            "gradients": gradients,
            "non_trainable": new_state,
            "metrics": new_metrics,
            "y_pred": y_pred,
            "loss": loss,
            "sam_sharpness": sharpness,
            "grad_norm": grad_norm,
        }


def _check_non_negative_float(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"Argument `{name}` must be a non-negative finite number. "
            f"Received: {name}={value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"Argument `{name}` must be a non-negative finite number. "
            f"Received: {name}={value}."
        )
    return value


def _stateless_scope(mapping):
    """`keras.StatelessScope(state_mapping=mapping, collect_losses=True)`.

    On torch, which runs eagerly, the mapping is filled directly: the
    constructor's per-value `convert_to_tensor` and shape check cost about
    1 ms per pass on a WRN (two passes: ~4% of a host-bound step), and the
    values here are the variables' own tensors or same-shaped results of
    them. Traced backends (TensorFlow, JAX) pay the constructor once.
    """
    if keras.backend.backend() != "torch":
        return keras.StatelessScope(state_mapping=mapping, collect_losses=True)
    scope = keras.StatelessScope(collect_losses=True)
    scope.state_mapping.update((id(k), v) for k, v in mapping)
    return scope


def _is_float(variable):
    return "float" in str(variable.dtype)


def _first_leaf(structure):
    return next(
        leaf for leaf in keras.tree.flatten(structure) if leaf is not None
    )


def _slice_batch(structure, start, stop):
    return keras.tree.map_structure(
        lambda t: None if t is None else t[start:stop], structure
    )
