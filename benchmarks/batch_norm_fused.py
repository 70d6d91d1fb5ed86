"""Fused vs unfused BatchNorm on TensorFlow: forward + backward time.

Keras 3 on TensorFlow normalizes with `tf.nn.moments` and
`tf.nn.batch_normalization`; tf-keras uses the fused kernel
(`fused_batch_norm`). This script times both, interleaved, on one
activation tensor, to explain the gap between Keras 3 and tf-keras step
times in `step_time.py` (see `saved_results/benchmarks/README.md`).

```
python benchmarks/batch_norm_fused.py --shape 128 32 32 16
```
"""

import argparse
import statistics
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=(128, 32, 32, 16))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args(argv)

    import tensorflow as tf

    x = tf.random.normal(args.shape)
    channels = args.shape[-1]
    scale, offset = tf.ones(channels), tf.zeros(channels)

    @tf.function
    def unfused(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            mean, variance = tf.nn.moments(x, [0, 1, 2])
            y = tf.nn.batch_normalization(
                x, mean, variance, offset, scale, 1e-5
            )
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, x)

    @tf.function
    def fused(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, epsilon=1e-5, is_training=True
            )
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, x)

    functions = {"unfused (Keras 3)": unfused, "fused (tf-keras)": fused}
    times = {name: [] for name in functions}
    for function in functions.values():
        function(x).numpy()
    for _ in range(args.repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                function(x).numpy()
            elapsed = time.perf_counter() - start
            times[name].append(1e3 * elapsed / args.calls)
    for name, values in times.items():
        print(
            f"{name}: {statistics.median(values):.2f} ms per forward + "
            f"backward of shape {tuple(args.shape)}"
        )


if __name__ == "__main__":
    main()
