"""Where a `SAMModel`'s rule keeps its state: non-trainable Keras
variables in a layer of the model, so that they are saved in `.keras`
files and by `BackupAndRestore`, passed through JAX's stateless step like
BatchNorm statistics, and averaged over `tf.distribute` replicas.
"""

import keras

from keras_sam import perturbed_subset


class RuleState(keras.layers.Layer):
    """The state variables of `variant`, created once the wrapped model's
    trainable variables exist (`build_for`)."""

    def __init__(self, variant, perturb, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.variant = variant
        self.perturb = perturb

    def build_for(self, sam_model):
        """Creates the variables `variant.state_shapes` asks for, given
        the variables `perturb` selects. Idempotent."""
        if self.built:
            return
        weights = perturbed_weights(sam_model, sam_model.trainable_variables)
        for index, shape in enumerate(self.variant.state_shapes(weights)):
            self.add_weight(
                shape=shape, initializer="zeros", dtype="float32",
                trainable=False, name=f"state_{index}", aggregation="mean",
            )
        self.built = True

    def call(self, inputs):
        return inputs


def perturbed_mask(sam_model, trainable_variables):
    """One boolean per trainable variable: whether the ascent moves it."""
    return perturbed_subset.perturbed_mask(
        sam_model.perturb, sam_model.model, trainable_variables
    )


def perturbed_weights(sam_model, values):
    """The entries of `values` (aligned with the trainable variables) that
    the ascent moves."""
    mask = perturbed_mask(sam_model, sam_model.trainable_variables)
    return [v for v, chosen in zip(values, mask) if chosen]


def state_indices(sam_model, non_trainable_variables):
    """Positions of the rule's variables in the non-trainable list."""
    position = {id(v): i for i, v in enumerate(non_trainable_variables)}
    return [position[id(v)] for v in sam_model.rule_state.variables]
