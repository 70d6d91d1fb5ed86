"""Where a `SAMModel`'s rule keeps its state: non-trainable Keras
variables in a layer of the model, so that they are saved in `.keras`
files and by `BackupAndRestore`, passed through JAX's stateless step like
BatchNorm statistics, and averaged over `tf.distribute` replicas.
"""

import keras

from keras_sam import perturbed_subset


class RuleState(keras.layers.Layer):
    """The state variables of `rule`, created once the wrapped model's
    trainable variables exist (`build_for`)."""

    def __init__(self, rule, perturb, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.rule = rule
        self.perturb = perturb

    def build_for(self, sam_model):
        """Creates the variables `rule.state_shapes` asks for, given
        the variables `perturb` selects. Idempotent."""
        if self.built:
            return
        trainable = sam_model.trainable_variables
        mask = perturbed_mask(sam_model, trainable)
        perturbed = [v for v, chosen in zip(trainable, mask) if chosen]
        shapes = self.rule.state_shapes(perturbed, trainable)
        for index, shape in enumerate(shapes):
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


def state_indices(sam_model, non_trainable_variables):
    """Positions of the rule's variables in the non-trainable list."""
    position = {id(v): i for i, v in enumerate(non_trainable_variables)}
    return [position[id(v)] for v in sam_model.rule_state.variables]
