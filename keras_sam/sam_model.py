"""`SAMModel`: sharpness-aware training for any Keras model."""

import warnings

import keras

from keras_sam import _keras_compat, _validation, perturbed_subset, rules
from keras_sam.backend import SAMTrainer
from keras_sam.rho_schedules import check_rho, serialize_rho
from keras_sam.rule_state import RuleState

PERTURBATIONS = ("replica", "global")
SPLIT_PERTURBATIONS = ("per_split", "shared")


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(SAMTrainer, keras.Model):
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
    epoch like `loss`, and, when `rho` is a schedule, `rho`, the value of
    the epoch's last step. `evaluate` and `predict` are those of the
    wrapped model.

    Args:
        model: A `keras.Model` (Sequential, functional or subclassed, built
            or not, with any nesting of inputs and outputs).
        rho: Non-negative float, the radius of the neighbourhood in which
            the loss is maximized, or a
            `keras.optimizers.schedules.LearningRateSchedule` giving it
            at `optimizer.iterations` (see `keras_sam.rho_schedules`).
            Defaults to `0.05`.
        adaptive: Boolean, shorthand for `rule=ASAM(eta)` (Kwon et al.,
            2021), whose neighbourhood scales with the weights; use a
            larger `rho` (the ASAM paper uses 0.5 to 2.0 on CIFAR).
            Defaults to `False`.
        eta: Non-negative float, ASAM's offset in `T = |w| + eta`. Only
            used when `adaptive=True`. Defaults to `0.01`.
        rule: `None` (SAM) or a rule from `keras_sam.rules` (`SAM()`,
            `ASAM(eta)`, `GSAM(alpha)`, `FriendlySAM()`, the cheaper
            `LookSAM()`, `ESAM()`, ...), which chooses the ascent point and
            the applied gradient, or `SAF(...)`, `MESA(...)`, which add a
            trajectory loss instead of the ascent (SAF's `x` carries each
            sample's index). Defaults to `None`. (`variant=`, its name
            before 0.2, is still accepted, with a `DeprecationWarning`.)
        perturb: Which variables the ascent moves: `None` (every
            trainable variable), a tuple of layer classes (with
            `keras_sam.NORMALIZATION_LAYERS`, SAM-ON: Mueller et al.,
            2023) or a callable `layer -> bool`. The norm is over the
            perturbed variables; the descent covers every trainable
            variable. A callable is saved by name, so register it with
            `keras.saving.register_keras_serializable`. Defaults to `None`.
        num_batch_splits: `None` or a positive integer `k`. Splits each
            (per-replica) batch into `k` chunks of nearly equal size; each
            chunk gets its own `eps` from its own gradient (m-sharpness,
            `m = batch / k`) and the `k` descent gradients are averaged,
            weighted by chunk size, so the learning rate keeps its meaning.
            Each chunk's clean pass starts from the pre-step BatchNorm
            statistics, and the statistics move once, by the chunk-size
            weighted average of the `k` updates (for the moving mean this
            equals one update with the whole batch's mean). A batch with
            fewer than `k` rows (a ragged last batch) is split into
            one-row chunks. Defaults to `None` (one chunk).
        split_perturbation: `"per_split"` or `"shared"`, what
            `num_batch_splits=k` splits. `"per_split"`: each chunk gets
            its own `eps` (m-sharpness, `m = batch / k`), as above.
            `"shared"`: gradient accumulation inside the step; the `k`
            clean passes are accumulated into the whole batch's gradient,
            one `eps` is taken from it (`m = batch`), and the `k`
            perturbed passes at `w + eps` are accumulated into the
            applied gradient. Both cost `2 k` chunk passes, each holding
            one chunk's activations (torch runs them one after another;
            on TensorFlow and JAX the compiler schedules them, and the
            peak memory is not measured here). `"shared"` is SAM on the
            whole batch for models without BatchNorm (which normalizes
            each chunk by its own statistics). Defaults to
            `"per_split"`.
        perturbation: `"replica"` or `"global"`. Under a
            `tf.distribute` strategy, `"replica"` lets each replica perturb
            with its own gradient, as the paper's 8-accelerator runs did;
            `"global"` all-reduces the first gradients before the norm (one
            extra all-reduce per step), which equals single-device SAM on
            the whole batch. Identical on one device. On JAX under
            `keras.distribution.DataParallel`, `"replica"` runs both
            passes on each device's shard of the batch (`jax.shard_map`),
            each device's `eps` from its own gradient, with one gradient
            all-reduce for the descent; `"global"` takes `eps` from the
            whole batch's gradient (keras-sam 0.1.0 applied `"global"` on
            JAX whatever was set). Defaults to `"replica"`.
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
        rule=None,
        perturb=None,
        split_perturbation="per_split",
        **kwargs,
    ):
        if "variant" in kwargs:
            warnings.warn(
                "`SAMModel(variant=...)` is now `SAMModel(rule=...)`; "
                "`variant` will be removed in a future version.",
                DeprecationWarning, stacklevel=2,
            )
            if rule is not None:
                raise ValueError(
                    "Pass `rule` (the new name of `variant`), not both. "
                    f"Received: rule={rule!r}, variant={kwargs['variant']!r}."
                )
            rule = kwargs.pop("variant")
        rho = check_rho(rho)
        eta = _validation.check_non_negative_float("eta", eta)
        if not isinstance(model, keras.Model):
            raise ValueError(
                "Argument `model` must be a `keras.Model`. Received: "
                f"model={_validation.short_repr(model)} of type "
                f"{type(model).__name__}."
            )
        if isinstance(model, SAMModel):
            raise ValueError(
                "Argument `model` is already a SAMModel: SAM inside SAM "
                "would make the ascent twice per step. Wrap the inner model "
                f"(`model.model`). Received: model={model.name!r}."
            )
        if getattr(model, "preprocessor", None) is not None:
            raise ValueError(
                "SAMModel does not apply the preprocessor of the KerasHub "
                f"task {model.name!r}: detach it (`preprocessor = "
                "task.preprocessor; task.preprocessor = None`) and map it "
                "over the data."
            )
        _validation.check_bool("adaptive", adaptive)
        rule = rules.get(rule, adaptive=adaptive, eta=eta)
        perturb = perturbed_subset.check_perturb(perturb)
        num_batch_splits = _validation.check_optional_int(
            "num_batch_splits", num_batch_splits
        )
        _validation.check_choice("perturbation", perturbation, PERTURBATIONS)
        _validation.check_choice(
            "split_perturbation", split_perturbation, SPLIT_PERTURBATIONS
        )
        super().__init__(**kwargs)
        self.model = model
        self.rho = rho
        self.rule = rule
        self.adaptive = isinstance(rule, rules.ASAM)
        self.eta = rule.eta if self.adaptive else eta
        self.num_batch_splits = num_batch_splits
        self.perturbation = perturbation
        self.split_perturbation = split_perturbation
        self.perturb = perturb
        self.rule_state = RuleState(rule, perturb, name="rule_state")
        self.sharpness_tracker = keras.metrics.Mean(name="sam_sharpness")
        self.grad_norm_tracker = keras.metrics.Mean(name="grad_norm")
        if model.built:
            self.rule_state.build_for(self)
            self.built = True

    def call(self, inputs, training=None):
        # SAF's batches carry each sample's index beside the inputs.
        outputs = self.model(self.rule.model_inputs(inputs),
                             training=training)
        # An unbuilt model is built by this call (fit's symbolic build):
        # the rule's state needs its variables.
        self.rule_state.build_for(self)
        return outputs

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`; a dataset or generator that yields inputs
        only (no targets) is refused before the first step, in one line.
        """
        self._checking_fit_batches = True
        try:
            return super().fit(*args, **kwargs)
        finally:
            self._checking_fit_batches = False

    def export(self, filepath, format="tf_saved_model", verbose=None,
               input_signature=None, **kwargs):
        """`keras.Model.export`; the input signature defaults to the
        wrapped model's, so a `SAMModel` exports like the model it wraps.
        """
        if input_signature is None:
            input_signature = _keras_compat.input_signature(self.model)
        return super().export(
            filepath, format=format, verbose=verbose,
            input_signature=input_signature, **kwargs,
        )

    # Serialization --------------------------------------------------------

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "rho": serialize_rho(self.rho),
            "rule": keras.saving.serialize_keras_object(self.rule),
            "num_batch_splits": self.num_batch_splits,
            "perturbation": self.perturbation,
            "split_perturbation": self.split_perturbation,
            "perturb": perturbed_subset.serialize_perturb(self.perturb),
        }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if "variant" in config:  # saved before 0.2
            config["rule"] = config.pop("variant")
        try:
            config["model"] = keras.saving.deserialize_keras_object(
                config["model"], custom_objects=custom_objects
            )
        except TypeError as error:
            # Keras wraps a TypeError raised here in a message that starts
            # with the whole config; another type reaches the user as is.
            raise _validation.unregistered_class_error(error) from error
        return cls(**config)
