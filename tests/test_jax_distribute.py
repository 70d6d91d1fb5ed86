"""SAMModel under JAX's `keras.distribution.DataParallel` (issue 30).

JAX reads its device count at import, so every test runs
`tests/jax_distribute_job.py` in a subprocess with 4 CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`) and checks what it
saved here: against the NumPy float64 reference (`sam_reference`), in
which device `d` holds rows `4 d` to `4 d + 3` of the 16-row batch (the
`DataParallel` layout), so per-device SAM is SAM on 4 chunks.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

import sam_reference as ref  # noqa: E402
from jax_distribute_job import make_problem  # noqa: E402

TESTS = Path(__file__).parent
DEVICES_FLAG = "--xla_force_host_platform_device_count="


def run_job(*args, devices=4, timeout=600):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"{DEVICES_FLAG}{devices}",
               PYTHONPATH=str(TESTS.parent))
    result = subprocess.run(
        [sys.executable, str(TESTS / "jax_distribute_job.py"),
         *map(str, args)],
        env=env, capture_output=True, text=True, timeout=timeout,
        cwd=TESTS.parent,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[
        -4000:]
    return result


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax_dp") / "shards.npz"
    run_job("shards", out)
    return np.load(out)


def reference(chunks, steps, friendly=None):
    """Weights after `steps` SAM steps with one `eps` per chunk."""
    x, y, params = make_problem(16, seed=30)
    weights = [p.astype("float64") for p in params]
    optimizer = ref.SGD(0.1, momentum=0.9)
    kwargs = {} if friendly is None else {"friendly": friendly}
    for _ in range(steps):
        grads, *_ = ref.sam_gradient(
            weights, x.astype("float64"), y.astype("float64"), rho=0.1,
            splits=chunks, **kwargs,
        )
        weights = optimizer.apply(weights, grads)
    return weights


def assert_weights(got, case, steps, want):
    for i, expected in enumerate(want):
        np.testing.assert_allclose(
            got[f"{case}_step{steps}_w{i}"], expected, rtol=2e-5, atol=2e-6,
            err_msg=f"{case} after {steps} steps, weight {i}",
        )


@pytest.mark.parametrize("steps", [1, 3])
def test_replica_mode_is_one_eps_per_device_shard(shards, steps):
    assert int(shards["num_devices"]) == 4
    assert_weights(shards, "replica", steps, reference(4, steps))


@pytest.mark.parametrize("steps", [1, 3])
def test_batch_splits_split_each_device_shard(shards, steps):
    assert_weights(shards, "replica_splits", steps, reference(8, steps))


@pytest.mark.parametrize("steps", [1, 3])
def test_friendly_sam_per_device_with_averaged_state(shards, steps):
    """Each device's ascent from its shard and the pre-step average; the
    new average is the mean of the devices' (Friendly-SAM's reference
    with size-weighted chunks)."""
    assert_weights(shards, "friendly", steps,
                   reference(4, steps, ref.Friendly(0.7, 0.6)))


@pytest.mark.parametrize("steps", [1, 3])
def test_global_mode_is_sam_on_the_whole_batch(shards, steps):
    assert_weights(shards, "global", steps, reference(1, steps))


def test_global_mode_equals_single_device_sam(shards):
    for i in range(4):
        np.testing.assert_allclose(
            shards[f"global_step3_w{i}"], shards[f"single_step3_w{i}"],
            rtol=1e-5, atol=1e-6,
        )
    # And the modes differ here by much more than the tolerance.
    assert np.abs(shards["global_step3_w0"]
                  - shards["replica_step3_w0"]).max() > 1e-3


def test_state_stays_identical_on_every_device(tmp_path):
    """BatchNorm statistics, the rule's average, seed counters: every
    device holds the same copy after 6 replica-mode steps."""
    out = tmp_path / "state.npz"
    run_job("state", out)
    got = np.load(out)
    assert int(got["iterations"]) == 6
    names = sorted(k for k in got.files if k.startswith("same_"))
    assert len(names) > 8
    for name in names:
        assert int(got[name.replace("same", "copies")]) == 4
        assert bool(got[name]), name
