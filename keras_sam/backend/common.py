"""Backend-neutral pieces of the SAM step, called by each backend's
`SAMTrainer.train_step` (`keras_sam/backend/{tensorflow,jax,torch}.py`).
"""

import keras
from keras import ops

from keras_sam import _keras_compat, rule_state, stateless
from keras_sam.rho_schedules import Schedule

# Logged by `fit` only; `evaluate` has no ascent step.
SAM_LOG_NAMES = ("sam_sharpness", "grad_norm", "rho")


def unpack(model, data):
    """Unpacks a batch and makes sure the model and its metrics are built.

    The SAM passes are stateless and need every variable to exist before
    they start, so a model wrapped unbuilt is built symbolically here, on
    the first trace, from the batch's shapes.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if not _keras_compat.fully_built(model):
        _keras_compat.symbolic_build(model, data_batch=data)
    if not model.trainable_variables:
        raise ValueError(
            "SAMModel needs trainable weights to perturb, but the "
            f"wrapped model={model.model.name!r} has none (it has "
            f"{len(model.model.weights)} weights, all non-trainable)."
        )
    return x, y, sample_weight


def scaled_loss(model, scale_loss, variables):
    """The function both SAM passes differentiate.

    `(trainable, non_trainable, metrics, x, y, sample_weight) ->
    (scale_loss(loss), (loss, y_pred, non_trainable, metrics))`, with
    `keras_sam.stateless.stateless_loss` in training mode.
    """

    def fn(trainable, non_trainable, metrics, x, y, sample_weight):
        loss, (y_pred, new_state, new_metrics) = stateless.stateless_loss(
            model, trainable, non_trainable, metrics, x, y, sample_weight,
            training=True, variables=variables,
        )
        return scale_loss(loss), (loss, y_pred, new_state, new_metrics)

    return fn


def loss_scale(scale_loss):
    """The loss scale of a `LossScaleOptimizer` (1 otherwise), float32."""
    return ops.cast(scale_loss(ops.ones((), "float32")), "float32")


def current_rho(model, iterations):
    """`rho` at this step: the float, or the schedule at `iterations`
    (the optimizer's step counter) as a float32 scalar."""
    if isinstance(model.rho, Schedule):
        return ops.cast(model.rho(iterations), "float32")
    return model.rho


def ascends(model):
    """Whether the step makes the ascent and the perturbed pass (with
    `rho=0` it is exactly the plain step, one pass)."""
    return isinstance(model.rho, Schedule) or model.rho > 0.0


def momentum_values(model, optimizer_values=None):
    """The optimizer's momentum buffers (aligned with the trainable
    variables) for a rule that reads them (MomentumSAM), else `None`.
    `optimizer_values`: the optimizer's state in a stateless step (JAX)."""
    if not model.variant.uses_momentum:
        return None
    optimizer = model.optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    buffers = getattr(inner, "momentums", None)
    if not isinstance(inner, keras.optimizers.SGD) or not buffers:
        raise ValueError(
            f"{type(model.variant).__name__} perturbs along the momentum "
            "of `keras.optimizers.SGD(momentum > 0)`. Received: optimizer="
            f"{type(inner).__name__}"
            + (f" with momentum={inner.momentum}" if hasattr(
                inner, "momentum") else "") + "."
        )
    if optimizer_values is None:
        return [buffer.value for buffer in buffers]
    index = {id(v): i for i, v in enumerate(optimizer.variables)}
    return [optimizer_values[index[id(buffer)]] for buffer in buffers]


def first_pass_point(model, weights, rho, momentum):
    """Step 1's point: `w`, or the rule's (MomentumSAM: `w` moved along
    the momentum, on the perturbed variables only)."""
    if momentum is None:
        return model.variant.first_point(weights, rho, momentum)
    mask = rule_state.perturbed_mask(model, model.trainable_variables)

    def chosen(values):
        return [v for v, keep in zip(values, mask) if keep]

    points = iter(model.variant.first_point(
        chosen(weights), rho, chosen(momentum)
    ))
    return [next(points) if keep else w for w, keep in zip(weights, mask)]


def maybe_ascend(model, step, state, gradients, gradient_norm, with_ascent,
                 cond=ops.cond):
    """`with_ascent(state) -> (applied, sharpness, state)` on steps where
    the rule ascends; otherwise the rule's one-pass step (`between`),
    with sharpness 0. The rule first observes `gradient_norm` (`||g||`,
    true-gradient units up to a constant factor). Its decision is `True`
    (every step: no branch in the graph), `False`, or a boolean tensor
    (`cond`, `keras.ops.cond` unless the backend gives its own: one branch
    runs, no retracing). Returns `(applied, sharpness, ascended, state)`,
    `ascended` 1.0 or 0.0."""
    state = model.variant.observe(gradient_norm, state)

    def with_ascent_flagged():
        applied, sharpness, new_state = with_ascent(state)
        return applied, sharpness, ops.ones(()), new_state

    def without_ascent():
        applied, new_state = model.variant.between(gradients, state)
        return applied, ops.zeros(()), ops.zeros(()), new_state

    if not ascends(model):
        return without_ascent()
    decision = model.variant.ascends_at(step, state)
    if decision is True:
        return with_ascent_flagged()
    if decision is False:
        return without_ascent()
    return cond(decision, with_ascent_flagged, without_ascent)


def ascend(model, gradients, weights, rho, state, gradient_scale,
           gradient_norm, maths):
    """Step 2: the ascent point `w + eps` for every trainable variable
    (unperturbed ones stay at `w`) and the rule's new state."""
    mask = rule_state.perturbed_mask(model, model.trainable_variables)
    if all(mask):
        return model.variant.ascent(
            gradients, weights, rho, state, gradient_scale, gradient_norm,
            maths,
        )

    def chosen(values):
        return [v for v, keep in zip(values, mask) if keep]

    points, state = model.variant.ascent(
        chosen(gradients), chosen(weights), rho, state, gradient_scale, None,
        maths,
    )
    points = iter(points)
    merged = [next(points) if keep else w for w, keep in zip(weights, mask)]
    return merged, state


def descent_batch(model, perturbed, non_trainable, metrics, batch,
                  clean_aux, variables):
    """The part of `batch` the perturbed pass runs on: all of it, or,
    for a rule with `data_fraction < 1` (ESAM), the `round(fraction * B)`
    samples (at least one) whose loss rises most from `w` (the clean
    pass's predictions) to `w + eps` (one forward pass here, its state
    discarded)."""
    fraction = model.variant.data_fraction
    if fraction >= 1.0:
        return batch
    x, y, sample_weight = batch
    per_sample = _per_sample_loss(model)
    _, (y_pred, _, _) = stateless.stateless_loss(
        model, perturbed, non_trainable, metrics, x, y, sample_weight,
        training=True, variables=variables,
    )
    increase = per_sample(y, y_pred) - per_sample(y, clean_aux[1])
    batch_size = ops.shape(increase)[0]
    if isinstance(batch_size, int):
        count = max(1, round(fraction * batch_size))
    else:  # a dynamic batch size (TensorFlow)
        count = ops.maximum(1, ops.cast(
            ops.round(fraction * ops.cast(batch_size, "float32")), "int32"
        ))
    _, indices = ops.top_k(increase, count)
    return keras.tree.map_structure(
        lambda t: None if t is None else ops.take(t, indices, axis=0), batch
    )


def _per_sample_loss(model):
    """`(y, y_pred) -> per-sample loss` of the compiled loss (float32,
    averaged over any axes after the first)."""
    loss = model.loss
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        function = loss.call
    elif callable(loss) and not isinstance(loss, (dict, list, tuple)):
        function = loss
    else:
        raise ValueError(
            f"{type(model.variant).__name__} selects samples by their loss "
            "and needs one compiled loss that Keras evaluates per sample. "
            f"Received: loss={loss!r}."
        )

    def per_sample(y, y_pred):
        values = ops.cast(function(y, y_pred), "float32")
        while len(values.shape) > 1:
            values = ops.mean(values, axis=-1)
        return values

    return per_sample


def rule_state_values(model, non_trainable_variables, non_trainable_values):
    """The rule's state among the non-trainable values."""
    indices = rule_state.state_indices(model, non_trainable_variables)
    return [non_trainable_values[i] for i in indices]


def with_rule_state(model, non_trainable_variables, non_trainable_values,
                    state):
    """`non_trainable_values` with the rule's entries set to `state`."""
    indices = rule_state.state_indices(model, non_trainable_variables)
    if not indices:
        return non_trainable_values
    values = list(non_trainable_values)
    for index, value in zip(indices, state):
        values[index] = value
    return values


def pass_result(gradients, clean_aux, sharpness, grad_norm,
                non_trainable=None, ascended=1.0):
    """The outcome of the two passes over one chunk of a batch;
    `non_trainable` defaults to the clean pass's; `ascended` is 1 where
    the ascent was made (and `sharpness` measured)."""
    loss, y_pred, clean_non_trainable, metrics = clean_aux
    if non_trainable is None:
        non_trainable = clean_non_trainable
    return {
        "gradients": gradients,
        "non_trainable": non_trainable,
        "metrics": metrics,
        "y_pred": y_pred,
        "loss": loss,
        "sam_sharpness": sharpness,
        "grad_norm": grad_norm,
        "ascended": ascended,
    }


def perturbation_splits(model):
    """The number of chunks that get their own `eps`: `num_batch_splits`
    with `split_perturbation="per_split"`, else one (the whole batch)."""
    if model.split_perturbation == "shared":
        return 1
    return model.num_batch_splits or 1


def split_gradients(model, loss_and_grads, non_trainable_variables):
    """`loss_and_grads` as the SAM passes call it: on the whole batch, or,
    with `split_perturbation="shared"` and `num_batch_splits=k`, as the
    size-weighted mean over `k` chunks, each a pass of its own (gradient
    accumulation inside the step: one `eps` from the whole batch's
    gradient, each pass holding one chunk's activations).

    Same signature: `(point, non_trainable, metrics, x, y, sample_weight)
    -> ((scaled_loss, (loss, y_pred, non_trainable, metrics)), grads)`;
    the chunks share state as in `over_chunks`.
    """
    num_splits = model.num_batch_splits or 1
    if model.split_perturbation != "shared" or num_splits == 1:
        return loss_and_grads

    def accumulated(point, non_trainable, metrics, x, y, sample_weight):
        def chunk_pass(state, metrics, batch):
            (scaled, aux), grads = loss_and_grads(point, state, metrics, *batch)
            loss, y_pred, new_state, new_metrics = aux
            return {
                "gradients": grads, "non_trainable": new_state,
                "metrics": new_metrics, "y_pred": y_pred,
                "loss": loss, "scaled_loss": scaled,
            }

        result = over_chunks(
            chunk_pass, num_splits, non_trainable_variables, non_trainable,
            metrics, (x, y, sample_weight),
        )
        aux = (result["loss"], result["y_pred"], result["non_trainable"],
               result["metrics"])
        return (result["scaled_loss"], aux), result["gradients"]

    return accumulated


# The entries of a pass result that are not scalars averaged over chunks.
_STRUCTURED = ("gradients", "non_trainable", "metrics", "y_pred")


def over_chunks(sam_pass, num_splits, non_trainable_variables,
                non_trainable_values, metrics_values, batch):
    """Runs `sam_pass(non_trainable, metrics, batch)` on the whole batch,
    or, with `num_splits > 1`, once per chunk (m-sharpness).

    Every chunk starts from the pre-step float state (BatchNorm
    statistics), whose new value is the size-weighted mean of the chunks'
    updates; integer state (seed counters) runs on from chunk to chunk, so
    that chunks draw different dropout masks; metrics run on too. The
    descent gradients and the scalars (every other entry of the pass's
    dict: losses, the logged values) are size-weighted means.
    """
    if num_splits == 1:
        return sam_pass(non_trainable_values, metrics_values, batch)
    is_float = [_is_float(v) for v in non_trainable_variables]
    batch_size = ops.shape(first_leaf(batch[0]))[0]
    counters, metrics = list(non_trainable_values), metrics_values
    weights, parts = [], []
    for index in range(num_splits):
        start = (index * batch_size) // num_splits
        stop = ((index + 1) * batch_size) // num_splits
        if isinstance(stop, int) and stop == start:
            continue  # an empty chunk of a batch with fewer rows than k
        state = [
            snapshot if float_ else counter
            for snapshot, counter, float_ in zip(
                non_trainable_values, counters, is_float
            )
        ]
        part = sam_pass(state, metrics, _slice_batch(batch, start, stop))
        weight = (
            ops.cast(stop - start, "float32") / ops.cast(batch_size, "float32")
        )
        # With a dynamic batch size (TensorFlow), a batch with fewer rows
        # than chunks has empty chunks, whose mean loss is 0/0: they
        # count for nothing.
        part = _without_empty_chunk(part, weight > 0.0, metrics)
        counters, metrics = part["non_trainable"], part["metrics"]
        weights.append(weight)
        parts.append(part)

    def weighted_mean(values, like):
        total = sum(w * ops.cast(v, "float32") for w, v in zip(weights, values))
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
            for name in last if name not in _STRUCTURED
        },
    }


def _without_empty_chunk(part, non_empty, previous_metrics):
    """`part` with every float value zeroed (metrics: kept as they were)
    where its chunk has no rows; exactly `part` otherwise."""

    def keep(value, fallback=None):
        if not hasattr(value, "dtype") or not _is_float(value):
            return value
        other = ops.zeros_like(value) if fallback is None else fallback
        return ops.where(non_empty, value, other)

    part = dict(part)
    for name in [name for name in part if name not in _STRUCTURED]:
        # Keras's loss of an empty batch can have shape (0,): sum it.
        value = part[name]
        part[name] = keep(ops.sum(value) if hasattr(value, "dtype") else value)
    part["gradients"] = [keep(g) for g in part["gradients"]]
    part["non_trainable"] = [keep(v) for v in part["non_trainable"]]
    part["metrics"] = [
        keep(value, previous)
        for value, previous in zip(part["metrics"], previous_metrics)
    ]
    return part


def per_batch_scalars(result, num_replicas=1, global_gradients=False):
    """Undoes the `1 / num_replicas` factor of distributed losses in the
    logged scalars (in global mode the all-reduced gradient is already
    the mean, so its norm needs no factor)."""
    replicas = float(num_replicas)
    norm_factor = 1.0 if global_gradients else replicas
    result["loss"] = result["loss"] * replicas
    result["sam_sharpness"] = result["sam_sharpness"] * replicas
    result["grad_norm"] = result["grad_norm"] * norm_factor
    return result


def update_metrics(model, x, y, sample_weight, result, rho=None):
    """Updates `loss`, the compiled metrics and the SAM logs; returns the
    logs, with `rho` when it follows a schedule. Runs statefully or inside
    a `StatelessScope` (JAX)."""
    batch_size = ops.shape(first_leaf(x))[0]
    tracker = _keras_compat.loss_tracker(model)
    if tracker is not None:
        tracker.update_state(result["loss"], sample_weight=batch_size)
    # Averaged over the steps that made the ascent (and measured it).
    model.sharpness_tracker.update_state(
        result["sam_sharpness"],
        sample_weight=ops.cast(batch_size, "float32") * result["ascended"],
    )
    model.grad_norm_tracker.update_state(
        result["grad_norm"], sample_weight=batch_size
    )
    logs = model.compute_metrics(
        x, y, result["y_pred"], sample_weight=sample_weight
    )
    if isinstance(model.rho, Schedule):
        logs["rho"] = rho
    if not model.variant.measures_sharpness:
        logs.pop("sam_sharpness", None)
    return logs


def assign(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


def without_sam_logs(logs):
    """Drops the training-only SAM entries from `evaluate`'s logs."""
    return {k: v for k, v in logs.items() if k not in SAM_LOG_NAMES}


def first_leaf(structure):
    return next(
        leaf for leaf in keras.tree.flatten(structure) if leaf is not None
    )


def _is_float(variable):
    return "float" in str(variable.dtype)


def _slice_batch(structure, start, stop):
    return keras.tree.map_structure(
        lambda t: None if t is None else t[start:stop], structure
    )
