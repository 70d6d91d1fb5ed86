"""Convolutions inside `jax.lax.cond` on XLA:CPU, against the same
computation outside it.

The skipping SAM rules (LookSAM, randomized SAM, AE-SAM, SAM in the late
phase) decide in the compiled step. With `jax.lax.cond` a gradient step
runs 30-40x slower on XLA:CPU inside a branch than outside one (100-190x
on an earlier machine): the optimized HLO keeps its backward convolutions
non-canonical in the branch (the input gradient's kernel as `01oi`, the
kernel gradient with the batch as feature), where outside a branch XLA
transposes them into the form its convolution library runs; forward
convolutions are not affected. Those rules then cost tens of plain steps,
so on XLA:CPU `keras_sam.backend.jax.cond` computes both branches and
selects (the last arm). This script measures it with JAX alone (no Keras):
the gradient of a two-convolution network, a plain step, a SAM step, both
inside `lax.cond` (taken and not taken), the SAM step inside a
`lax.while_loop` run once (a loop's body is compiled like a branch), and
both computed and selected.

    python benchmarks/jax_cond_cpu.py

Writes `saved_results/benchmarks/jax_cond_cpu.csv`.
"""

import csv
import pathlib
import time

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parent.parent

REPEATS = 3


def loss(w, x):
    numbers = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=numbers)
    y = jax.lax.conv_general_dilated(jnp.tanh(y), w, (1, 1), "SAME",
                                     dimension_numbers=numbers)
    return jnp.mean(y**2)


def main():
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (3, 3, 32, 32)) * 0.1
    x = jax.random.normal(key, (128, 32, 32, 32))
    grad = jax.grad(loss)

    def plain(w, x):
        return w - 0.1 * grad(w, x)

    def sam(w, x):
        return w - 0.1 * grad(w + 0.01 * grad(w, x), x)

    def in_cond(w, x, ascend):
        return jax.lax.cond(ascend, lambda: sam(w, x), lambda: plain(w, x))

    def in_while(w, x, ascend):
        # The same decision as a loop run once or not at all.
        def body(state):
            count, w = state
            return count - 1, sam(w, x)

        count = jnp.where(ascend, 1, 0)
        return jax.lax.while_loop(lambda s: s[0] > 0, body, (count, w))[1]

    def selected(w, x, ascend):
        return jnp.where(ascend, sam(w, x), plain(w, x))

    arms = [
        ("plain step", jax.jit(plain), (w, x)),
        ("SAM step", jax.jit(sam), (w, x)),
        ("lax.cond, SAM branch taken", jax.jit(in_cond),
         (w, x, jnp.array(True))),
        ("lax.cond, plain branch taken", jax.jit(in_cond),
         (w, x, jnp.array(False))),
        ("lax.while_loop, SAM step run once", jax.jit(in_while),
         (w, x, jnp.array(True))),
        ("both computed, jnp.where", jax.jit(selected),
         (w, x, jnp.array(True))),
    ]
    rows = []
    for name, step, args in arms:
        step(*args).block_until_ready()  # compile
        start = time.perf_counter()
        for _ in range(REPEATS):
            step(*args).block_until_ready()
        seconds = (time.perf_counter() - start) / REPEATS
        rows.append({"arm": name, "seconds": seconds})
        print(f"{name}: {seconds * 1000:.1f} ms", flush=True)
    # Imported after the timing: it imports Keras and its backend.
    from keras_sam.experiments import _run_records

    base = rows[0]["seconds"]
    path = ROOT / "saved_results" / "benchmarks" / "jax_cond_cpu.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(
            f, ["arm", "seconds", "ratio_to_plain", "jax", "processor",
                "cores", "commit"]
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({
                **row, "ratio_to_plain": row["seconds"] / base,
                "jax": jax.__version__,
                "processor": _run_records.processor_name(),
                "cores": _run_records.cpu_count(),
                "commit": _run_records.git_commit(),
            })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
