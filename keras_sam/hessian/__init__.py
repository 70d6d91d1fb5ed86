"""Curvature of the training loss: Hessian-vector products (and those of
the generalized Gauss-Newton and Fisher matrices, on any block of
layers), top eigenvalues and eigenvectors, the trace (Hutchinson,
Hutch++), the eigenvalue density, per-layer curvature,
perturbation sharpness, and the linear stability of GD, SGD (with or
without momentum) and SAM at the current weights.

Every function but the closed forms (`gd_stability_threshold`,
`sam_stability_threshold`, `sam_oscillation_amplitude`) and
`sgd_second_moment_growth` (dense per-sample Hessians) takes a compiled
Keras model (a plain `keras.Model` or a `keras_sam.SAMModel`) and probe
data, and measures the loss that `fit` minimizes: the compiled loss plus
the regularization losses (weight regularizers and `add_loss` terms),
averaged over the probe data. The loss
is evaluated in inference mode (`training=False`: BatchNorm uses its moving
statistics, dropout is off) through `stateless_call`, so nothing is
updated: weights, BatchNorm statistics, seeds and metrics stay as they
were. Probe data is split into microbatches of `probe_batch_size` samples;
microbatch results are weighted by their size, so every product is the
one of the whole probe set's loss (exact for losses reduced with Keras's
default `"sum_over_batch_size"`).

Operators. `operator="ggn"`, `"fisher"` and `"empirical_fisher"` replace
the Hessian by the generalized Gauss-Newton matrix or the Fisher (true or
empirical) in `top_eigenvalues`, `hessian_trace`, `eigenvalue_density`,
`layer_top_eigenvalues` and `curvature_vector_product` (definitions and
normalization there); `layers=` restricts them to a diagonal block.

Hessian-vector products are exact (double backpropagation on TensorFlow
and PyTorch, forward-over-reverse on JAX), computed in the model's variable
dtype, and accumulated in float64; the Lanczos recurrence runs in float64.
Measure in float32 or float64: under a float16 or bfloat16 policy the
products carry that precision.

BatchNorm. Training steps normalize with batch statistics, these
measurements with the moving statistics. While the moving statistics lag
(early in training; Keras's BatchNorm momentum is 0.99) the two losses
and their Hessians can differ widely: on a small CNN trained 3 epochs on
the CIFAR-10 sample with SGD (learning rate 0.05, momentum 0.9), the
inference-mode sharpness was 130, a GD stability ratio of 1.7, while
training went on without diverging. For BatchNorm networks read the
numbers as properties of the inference-mode loss.

Layers. Per-layer results (`hessian_trace(..., per_layer=True)`,
`layer_top_eigenvalues`) are keyed by the path of the layer that owns the
variables: a trainable variable's Keras `path` without its last
component (`[v.path for v in model.trainable_variables]` lists them). The
path is the name scope Keras was in when it created the variable, so it
names the parents that built the layer: `"dense"` for `"dense/kernel"`
of a functional model's own Dense layer; `"sequential/dense"` in a
Sequential model (it builds its layers in its own scope);
`"inner/dense_1"` for a Dense inside a nested model `"inner"`;
`"my_model/block/dense_2"` inside a custom layer `block` of a subclassed
model. The variables sharing a key (a layer's kernel and bias, a
BatchNormalization's scale and offset) form one diagonal block of `H`;
blocks come in the order their first variable has in
`model.trainable_variables`. A `SAMModel` has its inner model's keys.

Conventions. `H` is the Hessian of the probe loss, `H_i` that of sample
`i`'s loss (with the regularization, so `H = mean_i H_i`), and
`Sigma = mean_i H_i^2 - H^2` their variance. Keras's `"mse"` has no `1/2`:
its Hessians are twice those of half the squared error.

References:
    - Wu, Ma & E, 2018. How SGD Selects the Global Minima in
      Over-parameterized Learning: A Dynamical Stability Perspective.
      https://papers.nips.cc/paper/8049
    - Wu, Wang & Su, 2022. The alignment property of SGD noise and how it
      helps select flat minima: A stability analysis.
      https://arxiv.org/abs/2207.02628
    - Hutchinson, 1989. A stochastic estimator of the trace of the
      influence matrix for Laplacian smoothing splines.
      https://doi.org/10.1080/03610918908812806
    - Yao et al., 2020. PyHessian: Neural Networks Through the Lens of the
      Hessian. https://arxiv.org/abs/1912.07145
    - Ghorbani, Krishnan & Xiao, 2019. An Investigation into Neural Net
      Optimization via Hessian Eigenvalue Density.
      https://arxiv.org/abs/1901.10159
    - Keskar et al., 2017. On Large-Batch Training for Deep Learning:
      Generalization Gap and Sharp Minima. https://arxiv.org/abs/1609.04836
    - Andriushchenko et al., 2023. A Modern Look at the Relationship
      between Sharpness and Generalization.
      https://arxiv.org/abs/2302.07011
    - Martens, 2020. New Insights and Perspectives on the Natural
      Gradient Method. https://arxiv.org/abs/1412.1193
    - Meyer, Musco, Musco & Woodruff, 2021. Hutch++: Optimal Stochastic
      Trace Estimation. https://arxiv.org/abs/2010.09649
"""

from keras_sam.hessian.alignment import noise_alignment
from keras_sam.hessian.density import eigenvalue_density, smoothed_density
from keras_sam.hessian.noise_batches import DEFAULT_MAX_EXACT_SAMPLES
from keras_sam.hessian.probe import (
    DEFAULT_PROBE_BATCH_SIZE,
    ProbeSet,
    as_probe_set,
)
from keras_sam.hessian.sharpness import (
    SHARPNESS_KINDS,
    SHARPNESS_NORMS,
    adaptive_sharpness,
    keskar_sharpness,
)
from keras_sam.hessian.spectrum import (
    curvature_vector_product,
    hessian_trace,
    hessian_vector_product,
    layer_top_eigenvalues,
    top_eigenvalues,
)
from keras_sam.hessian.stability import (
    DEFAULT_NUM_DIRECTIONS,
    DEFAULT_STABILITY_TOLERANCE,
    linear_stability,
)
from keras_sam.hessian.stability_theory import (
    gd_stability_threshold,
    sam_oscillation_amplitude,
    sam_stability_threshold,
    sgd_second_moment_growth,
)

__all__ = [
    "DEFAULT_MAX_EXACT_SAMPLES",
    "DEFAULT_NUM_DIRECTIONS",
    "DEFAULT_PROBE_BATCH_SIZE",
    "DEFAULT_STABILITY_TOLERANCE",
    "ProbeSet",
    "SHARPNESS_KINDS",
    "SHARPNESS_NORMS",
    "adaptive_sharpness",
    "as_probe_set",
    "curvature_vector_product",
    "eigenvalue_density",
    "gd_stability_threshold",
    "hessian_trace",
    "hessian_vector_product",
    "keskar_sharpness",
    "layer_top_eigenvalues",
    "linear_stability",
    "noise_alignment",
    "sam_oscillation_amplitude",
    "sam_stability_threshold",
    "sgd_second_moment_growth",
    "smoothed_density",
    "top_eigenvalues",
]
