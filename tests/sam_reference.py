"""An independent NumPy (float64) implementation of SAM on a tiny MLP.

The model is `Dense(hidden, tanh) -> Dense(out)` with Keras's "mse" loss
(mean over all outputs, no 1/2), an optional L2 kernel regularizer on the
first layer and an optional activity penalty `c * mean(h^2)` added with
`add_loss`. Forward, backward and the optimizers are written out by hand,
following the formulas in the papers and the Keras optimizer docs.
"""

import numpy as np


def forward_backward(params, x, y, sample_weight=None, l2=0.0, penalty=0.0):
    """Returns the loss and its gradient for the MLP at `params`."""
    w1, b1, w2, b2 = params
    n = x.shape[0]
    pre = x @ w1 + b1
    h = np.tanh(pre)
    out = h @ w2 + b2
    residual = out - y
    per_sample = np.mean(residual**2, axis=1)
    sw = np.ones(n) if sample_weight is None else sample_weight
    # Keras "sum_over_batch_size": weighted sum divided by the batch size.
    loss = np.sum(sw * per_sample) / n
    loss += l2 * np.sum(w1**2) + penalty * np.mean(h**2)
    d_out = (2.0 / (n * y.shape[1])) * sw[:, None] * residual
    g_w2 = h.T @ d_out
    g_b2 = d_out.sum(axis=0)
    d_h = d_out @ w2.T + penalty * 2.0 * h / h.size
    d_pre = d_h * (1.0 - h**2)
    g_w1 = x.T @ d_pre + 2.0 * l2 * w1
    g_b1 = d_pre.sum(axis=0)
    return loss, [g_w1, g_b1, g_w2, g_b2]


def epsilon(params, grads, rho, adaptive=False, eta=0.01, mask=None):
    """SAM's (or ASAM's) `eps`; with `mask`, over the masked entries only
    (the norm too), zero elsewhere."""
    mask = [True] * len(params) if mask is None else mask
    chosen = [i for i, keep in enumerate(mask) if keep]
    p = [params[i] for i in chosen]
    g = [grads[i] for i in chosen]
    if adaptive:
        t = [np.abs(w) + eta for w in p]
        norm = np.sqrt(sum(np.sum((ti * gi) ** 2) for ti, gi in zip(t, g)))
        parts = [rho * ti**2 * gi / norm for ti, gi in zip(t, g)]
    else:
        norm = np.sqrt(sum(np.sum(gi**2) for gi in g))
        parts = [rho * gi / norm for gi in g]
    eps = [np.zeros_like(w) for w in params]
    for i, part in zip(chosen, parts):
        eps[i] = part
    return eps


def gsam_direction(grads, grads_p, alpha):
    """Zhuang et al. 2022: `g_p - alpha * (g - <g, g_p>/||g_p||^2 g_p)`."""
    inner = sum(np.sum(g * gp) for g, gp in zip(grads, grads_p))
    squared = sum(np.sum(gp * gp) for gp in grads_p)
    return [gp - alpha * (g - inner / squared * gp)
            for g, gp in zip(grads, grads_p)]


class Friendly:
    """Friendly-SAM's moving average (Li et al. 2024, official code):
    ascent along `g - sigma m_{t-1}`, `m_t = decay m_{t-1} + (1-decay) g`,
    `m` starting at the first gradient."""

    def __init__(self, sigma, decay):
        self.sigma, self.decay, self.m = sigma, decay, None

    def direction(self, grads, mask):
        g = [gi for gi, keep in zip(grads, mask) if keep]
        if self.m is None:
            return grads, g
        d = [gi - self.sigma * mi for gi, mi in zip(g, self.m)]
        new = [self.decay * mi + (1 - self.decay) * gi
               for gi, mi in zip(g, self.m)]
        it = iter(d)
        return [next(it) if keep else gi for gi, keep in zip(grads, mask)], new


def sam_gradient(params, x, y, rho, adaptive=False, eta=0.01, splits=1,
                 sample_weight=None, l2=0.0, penalty=0.0, alpha=0.0,
                 mask=None, friendly=None):
    """The SAM descent gradient, m-sharpness chunks weighted by size.

    `alpha > 0` is GSAM's descent, `mask` the perturbed subset,
    `friendly` a `Friendly` state (updated: each chunk from the pre-step
    average, the new one their size-weighted mean).

    Returns `(gradient, clean_loss, perturbed_loss, grad_norm)`.
    """
    n = x.shape[0]
    mask = [True] * len(params) if mask is None else mask
    bounds = [(i * n) // splits for i in range(splits + 1)]
    total = [np.zeros_like(p) for p in params]
    clean = perturbed = norm = 0.0
    averages = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        part = slice(start, stop)
        sw = None if sample_weight is None else sample_weight[part]
        loss, grads = forward_backward(
            params, x[part], y[part], sw, l2, penalty
        )
        weight = (stop - start) / n
        direction = grads
        if friendly is not None:
            direction, average = friendly.direction(grads, mask)
            averages.append((weight, average))
        eps = epsilon(params, direction, rho, adaptive, eta, mask)
        shifted = [p + e for p, e in zip(params, eps)]
        loss_p, grads_p = forward_backward(
            shifted, x[part], y[part], sw, l2, penalty
        )
        if alpha:
            grads_p = gsam_direction(grads, grads_p, alpha)
        total = [t + weight * g for t, g in zip(total, grads_p)]
        clean += weight * loss
        perturbed += weight * loss_p
        norm += weight * np.sqrt(sum(np.sum(g**2) for g in grads))
    if friendly is not None:
        friendly.m = [
            sum(w * a[i] for w, a in averages)
            for i in range(len(averages[0][1]))
        ]
    return total, clean, perturbed, norm


def _dot(a, b):
    return sum(np.sum(x * y) for x, y in zip(a, b))


def cheap_sam_gradient(params, x, y, rho, ascend, looksam=None):
    """One step of a rule that skips the ascent on some steps.

    `ascend`: whether this step is a SAM step. `looksam`: `None` (a
    skipped step is the plain step), or a dict with `alpha` and `stored`
    (LookSAM, Liu et al. 2022: a SAM step stores
    `g_v = g_s - (<g, g_s>/||g||^2) g`; the others apply
    `g + alpha ||g||/||g_v|| g_v`), updated in place.

    Returns `(gradient, sharpness)`.
    """
    loss, grads = forward_backward(params, x, y)
    if ascend:
        eps = epsilon(params, grads, rho)
        loss_p, grads_p = forward_backward(
            [p + e for p, e in zip(params, eps)], x, y
        )
        if looksam is not None:
            coefficient = _dot(grads, grads_p) / _dot(grads, grads)
            looksam["stored"] = [gp - coefficient * g
                                 for g, gp in zip(grads, grads_p)]
        return grads_p, loss_p - loss
    if looksam is not None and looksam["stored"] is not None:
        stored = looksam["stored"]
        scale = looksam["alpha"] * np.sqrt(_dot(grads, grads)) / np.sqrt(
            _dot(stored, stored))
        return [g + scale * v for g, v in zip(grads, stored)], 0.0
    return grads, 0.0


def momentum_sam_run(params, x, y, rho, learning_rate, momentum, steps):
    """Momentum-SAM (Becker et al. 2024) with Keras's SGD buffer
    `m <- mu m - lr g`: each step's gradient at `w + rho m/||m||`
    (`w` at `m = 0`), applied at `w`. Returns the weights after each step
    and the loss at each step's point."""
    m = [np.zeros_like(p) for p in params]
    history, losses = [], []
    for _ in range(steps):
        norm = np.sqrt(_dot(m, m))
        point = params if norm == 0 else [
            p + rho * mi / norm for p, mi in zip(params, m)]
        loss, grads = forward_backward(point, x, y)
        m = [momentum * mi - learning_rate * g for mi, g in zip(m, grads)]
        params = [p + mi for p, mi in zip(params, m)]
        history.append(params)
        losses.append(loss)
    return history, losses


class SGD:
    """Keras SGD: `v = m v - lr g; w += v` (plain when m = 0)."""

    def __init__(self, learning_rate, momentum=0.0, weight_decay=0.0):
        self.lr, self.momentum, self.wd = learning_rate, momentum, weight_decay
        self.velocity = None

    def apply(self, params, grads):
        if self.velocity is None:
            self.velocity = [np.zeros_like(p) for p in params]
        # Decoupled weight decay first, as keras.optimizers.Optimizer does.
        params = [p - self.lr * self.wd * p for p in params]
        if self.momentum == 0.0:
            return [p - self.lr * g for p, g in zip(params, grads)]
        self.velocity = [
            self.momentum * v - self.lr * g
            for v, g in zip(self.velocity, grads)
        ]
        return [p + v for p, v in zip(params, self.velocity)]


class Adam:
    """Keras Adam (Kingma & Ba 2014, with Keras's epsilon placement)."""

    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7):
        self.lr, self.b1, self.b2, self.eps = (
            learning_rate, beta_1, beta_2, epsilon
        )
        self.m = self.v = None
        self.t = 0

    def apply(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        alpha = self.lr * np.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        self.m = [
            self.b1 * m + (1 - self.b1) * g for m, g in zip(self.m, grads)
        ]
        self.v = [
            self.b2 * v + (1 - self.b2) * g**2 for v, g in zip(self.v, grads)
        ]
        return [
            p - alpha * m / (np.sqrt(v) + self.eps)
            for p, m, v in zip(params, self.m, self.v)
        ]


class AESAMPolicy:
    """AE-SAM's decision (Jiang et al. 2023, Algorithm 1): moving mean
    and variance of `n = ||g||^2`, SAM where `n >= mu + c_t sqrt(s)`, `c_t`
    linear from `lower` to `upper` over `total_steps`."""

    def __init__(self, total_steps, decay, lower, upper):
        self.total_steps, self.decay = total_steps, decay
        self.lower, self.upper = lower, upper
        self.mean = self.variance = 0.0

    def decide(self, step, grads):
        n = _dot(grads, grads)
        self.mean = self.decay * self.mean + (1 - self.decay) * n
        self.variance = (self.decay * self.variance
                         + (1 - self.decay) * (n - self.mean) ** 2)
        c = self.lower + (self.upper - self.lower) * min(
            step / self.total_steps, 1.0)
        threshold = self.mean + c * np.sqrt(self.variance)
        return n >= threshold, abs(n - threshold) / n


def hash32(index, step, seed):
    """`keras_sam.rules`' 32-bit integer hash, in NumPy int32 (whose
    arithmetic wraps like the backends')."""
    def shift(x, s):
        return (x >> s) & ((1 << (32 - s)) - 1)

    with np.errstate(over="ignore"):
        x = (np.asarray(index, np.int32) * np.int32(374761393)
             + np.int32(step) * np.int32(668265261)
             + np.int32((seed * 1274126177) % 2**31))
        for s, multiplier in ((16, 0x7FEB352D), (15, -2073254261)):
            x = x ^ shift(x, s)
            x = x * np.int32(multiplier)
        return x ^ shift(x, 16)


def esam_gradient(params, x, y, rho, step, seed, beta, gamma):
    """ESAM (Du et al. 2022): `eps = (rho/beta) m * g/||g||` with the
    Bernoulli mask `hash(index, step, seed) & 0xFFFFFF < beta 2^24` over
    the running index of all weights, then the perturbed gradient on the
    `round(gamma n)` samples whose loss rises most. Returns `(gradient,
    sharpness, masks)`."""
    loss, grads = forward_backward(params, x, y)
    eps = epsilon(params, grads, rho)
    sizes = [p.size for p in params]
    index = np.arange(sum(sizes), dtype=np.int32)
    flat = (hash32(index, step, seed) & 0xFFFFFF) < beta * 2.0**24
    masks = [m.reshape(p.shape) for m, p in zip(
        np.split(flat, np.cumsum(sizes)[:-1]), params)]
    eps = [np.where(m, e / beta, 0.0) for e, m in zip(eps, masks)]
    shifted = [p + e for p, e in zip(params, eps)]

    def losses(weights):
        return np.array([forward_backward(weights, x[i:i + 1], y[i:i + 1])[0]
                         for i in range(len(x))])

    increase = losses(shifted) - losses(params)
    count = max(1, round(gamma * len(x)))
    chosen = np.sort(np.argsort(-increase)[:count])
    order = np.sort(increase)[::-1]
    margin = (order[count - 1] - order[count]) if count < len(x) else 1.0
    loss_p, grads_p = forward_backward(shifted, x[chosen], y[chosen])
    return grads_p, loss_p - loss, masks, margin


# SAF and MESA (Du et al., 2022) on a linear softmax model -----------------


def _log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def trajectory_loss_gradient(kernel, bias, x, labels, reference, valid,
                             weight, tau, sample_weight=None):
    """Cross-entropy of `logits = x kernel + bias` plus `weight tau^2 / B
    sum_i valid_i KL(softmax(r_i / tau) || softmax(logits_i / tau))`, its
    gradient (closed form: `dz = (p - onehot) / B + weight tau / B
    valid (softmax(z / tau) - softmax(r / tau))`) and the logits."""
    logits = x @ kernel + bias
    batch = x.shape[0]
    log_p = _log_softmax(logits)
    onehot = np.eye(logits.shape[1])[labels]
    # Sample weights weight the cross-entropy only (Keras: weighted sum
    # over the batch size).
    sw = np.ones(batch) if sample_weight is None else sample_weight
    loss = -np.sum(sw[:, None] * onehot * log_p) / batch
    d_logits = sw[:, None] * (np.exp(log_p) - onehot) / batch
    if reference is not None:
        valid = np.asarray(valid, dtype="float64")
        log_target = _log_softmax(reference / tau)
        log_current = _log_softmax(logits / tau)
        kl = np.sum(np.exp(log_target) * (log_target - log_current), axis=1)
        loss += weight * tau**2 * np.sum(valid * kl) / batch
        d_logits += (weight * tau / batch) * valid[:, None] * (
            np.exp(log_current) - np.exp(log_target)
        )
    return loss, [x.T @ d_logits, d_logits.sum(axis=0)], logits


def saf_run(kernel, bias, x, labels, index, batch_size, epochs, epochs_back,
            weight, tau, start_epoch, learning_rate, sample_weight=None):
    """Plain SGD with SAF's loss; returns per step `(loss, gradients,
    kernel, bias)` and the stored logits `{(epoch, sample): logits}`."""
    kernel, bias = kernel.astype("float64"), bias.astype("float64")
    x = x.astype("float64")
    stored, steps = {}, []
    for epoch in range(epochs):
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            samples = index[rows]
            past = [stored.get((epoch - epochs_back, i)) for i in samples]
            valid = [p is not None and epoch >= start_epoch for p in past]
            reference = np.stack([
                p if p is not None else np.zeros(kernel.shape[1])
                for p in past
            ])
            loss, grads, logits = trajectory_loss_gradient(
                kernel, bias, x[rows], labels[rows], reference, valid,
                weight, tau,
                None if sample_weight is None else sample_weight[rows],
            )
            for sample, row in zip(samples, logits):
                stored[(epoch, sample)] = row
            kernel = kernel - learning_rate * grads[0]
            bias = bias - learning_rate * grads[1]
            steps.append((loss, grads, kernel, bias))
    return steps, stored


def mesa_run(kernel, bias, x, labels, batch_size, steps, decay, weight, tau,
             start_step, learning_rate):
    """Plain SGD with MESA's loss; returns per step `(loss, gradients,
    kernel, bias)` and the final moving averages `(kernel, bias)`."""
    kernel, bias = kernel.astype("float64"), bias.astype("float64")
    x = x.astype("float64")
    average, history = None, []
    for step in range(steps):
        start = (step * batch_size) % len(x)
        rows = slice(start, start + batch_size)
        if average is None:
            average = [kernel, bias]
        else:
            average = [decay * v + (1.0 - decay) * w
                       for v, w in zip(average, (kernel, bias))]
        teacher = x[rows] @ average[0] + average[1]
        valid = np.full(len(teacher), step >= start_step)
        loss, grads, _ = trajectory_loss_gradient(
            kernel, bias, x[rows], labels[rows], teacher, valid, weight, tau,
        )
        kernel = kernel - learning_rate * grads[0]
        bias = bias - learning_rate * grads[1]
        history.append((loss, grads, kernel, bias))
    return history, average
