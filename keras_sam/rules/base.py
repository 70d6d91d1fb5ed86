"""`Rule`, the interface of a SAM rule (`keras_sam.rules`)."""




class Rule:
    """Base class of a SAM rule: plain SAM's ascent and descent.

    Subclasses override `ascent_point` and/or `descent`, and
    `state_shapes` if they keep state.
    """

    # Whether the rule ever makes the ascent (and so logs sam_sharpness).
    measures_sharpness = True
    # Whether the rule adds `loss_term` to the loss and updates its state
    # with `record` after the clean pass.
    adds_loss = False
    # Whether the rule's state runs on from chunk to chunk under
    # `num_batch_splits` (each chunk's pass sees what the previous chunk
    # wrote) instead of each chunk starting from the step's state and the
    # chunks' new states being averaged.
    carries_state = False

    def state_shapes(self, perturbed, trainable):
        """Shapes of the float32 state the rule keeps, given the variables
        it perturbs and all trainable variables. Defaults to none."""
        return []

    def first_direction(self, optimizer, optimizer_values=None):
        """The direction along which the first pass's point moves from
        `w` (one tensor per trainable variable), read from the optimizer;
        `None` (the default): the first pass is the clean pass at `w`.

        Args:
            optimizer: The compiled optimizer (a `LossScaleOptimizer`
                wraps the one whose state is read).
            optimizer_values: The values of `optimizer.variables` in a
                stateless step (JAX), else `None` (read the variables).
        """
        return None

    def first_point(self, weights, rho, direction):
        """Where the first pass is taken, given the perturbed variables'
        values and `first_direction` on them (when it is not `None`)."""
        return weights

    def descent_batch(self, model, point, chunk, clean_predictions,
                      variables):
        """The rows of `chunk.batch` the perturbed pass runs on: all of
        them (the default).

        Args:
            model: The `SAMModel`.
            point: The ascent point `w + eps` (every trainable variable).
            chunk: The `keras_sam.backend.splits.Chunk` of the pass: the
                batch `(x, y, sample_weight)` and the state it starts from.
            clean_predictions: The clean pass's predictions on it.
            variables: The model's `keras_sam.stateless.ModelVariables`.
        """
        return chunk.batch

    def observe(self, gradient_norm, state):
        """The state after seeing this step's clean gradient norm `||g||`
        (true-gradient units, before the decision); unchanged by
        default."""
        return state

    def ascends_at(self, step, state):
        """Whether step `step` (the optimizer's `iterations` before the
        update) makes the ascent: `True`, or a boolean scalar tensor."""
        return True

    def between(self, gradients, state):
        """`(gradients to apply, new_state)` on a step without ascent;
        the clean gradient (the plain optimizer step)."""
        return gradients, state

    def ascent_point(self, gradients, weights, rho, state,
                     gradient_scale=1.0, gradient_norm=None):
        """Returns `(w + eps, new_state)` for the perturbed variables.

        Args:
            gradients: The clean gradients of the perturbed variables.
            weights: Their current values.
            rho: The radius, a float or a float32 scalar tensor.
            state: List of the state values (see `state_shapes`).
            gradient_scale: Scalar with `true gradient = scale * g`.
            gradient_norm: `||g||` over these gradients, if known.
        """
        raise NotImplementedError

    def descent(self, clean_gradients, perturbed_gradients, state):
        """Returns `(gradients to apply, new_state)`; SAM applies the
        perturbed gradient."""
        return perturbed_gradients, state

    def model_inputs(self, x):
        """The wrapped model's inputs in a batch's `x`: `x` itself (the
        default)."""
        return x

    def loss_term(self, model, predictions, chunk, state, step):
        """A term added to the training loss in every pass (called where
        `adds_loss` is `True`): a float32 scalar tensor.

        Args:
            model: The `SAMModel`.
            predictions: The pass's predictions (differentiated).
            chunk: The `keras_sam.backend.splits.Chunk` of the pass: the
                batch `(x, y, sample_weight)` and the state it starts from.
            state: List of the rule's state values.
            step: The `keras_sam.backend.trainer.Step` (its `iterations`,
                `weights` and `variables`).
        """
        raise NotImplementedError

    def record(self, model, predictions, chunk, state, step):
        """The state after the clean pass, given its predictions (called
        where `adds_loss` is `True`; arguments as `loss_term`'s)."""
        return state

    def get_config(self):
        """The rule's constructor arguments, as a JSON-able dict (saved
        with the `SAMModel` that uses it)."""
        return {}

    @classmethod
    def from_config(cls, config):
        """The rule that `get_config` describes."""
        return cls(**config)

    def __repr__(self):
        config = self.get_config()
        arguments = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({arguments})"

    def __eq__(self, other):
        return type(self) is type(other) and (
            self.get_config() == other.get_config()
        )

    __hash__ = object.__hash__
