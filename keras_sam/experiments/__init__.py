"""The experiment application built on the library: one settings object
per run (`config.RunConfig`), CIFAR data and pipelines (`sources`,
`datasets`, `data_pipeline` for `tf.data`, `numpy_pipeline` for JAX and
PyTorch without TensorFlow), the SAM paper's recipe (`training`,
`paper_results`), KerasTuner sweeps (`tuning`, `sweep`), the table
reproduction (`reproduce`), symmetric label noise (`label_noise`), the
demo (`demo`) and the `keras-sam` command line (`cli`, one module per
subcommand).

Private modules shared with `benchmarks/` and `tutorials/`: what a run
records about itself, CSV reading and README sections (`_run_records`),
step timing (`_step_timing`), the tf-keras twin of a model
(`_tf_keras_twin`) and the KerasTuner internals the sweep relies on
(`_kerastuner_compat`).

The library (`keras_sam.SAMModel`, `keras_sam.hessian`,
`keras_sam.callbacks`, ...) does not import this subpackage.
"""
