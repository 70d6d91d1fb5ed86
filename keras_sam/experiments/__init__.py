"""The experiment application built on the library: one settings object
per run (`config.RunConfig`), CIFAR data and pipelines (`sources`,
`datasets`, `data_pipeline` for `tf.data`, `numpy_pipeline` for JAX and
PyTorch without TensorFlow), the SAM paper's recipe (`training`,
`paper_results`), KerasTuner sweeps (`tuning`, `sweep`), the table
reproduction (`reproduce`), the demo (`demo`) and the `keras-sam`
command line (`cli`, one module per subcommand).

The library (`keras_sam.SAMModel`, `keras_sam.hessian`,
`keras_sam.callbacks`, ...) does not import this subpackage.
"""
