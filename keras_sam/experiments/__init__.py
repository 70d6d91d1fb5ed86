"""The experiment application built on the library: CIFAR data and
pipelines (`datasets`, `data_pipeline`), the SAM paper's recipe
(`training`, `paper_results`), KerasTuner sweeps (`tuning`), the table
reproduction (`reproduce`), the demo (`demo`) and the `keras-sam`
command line (`cli`).

The library (`keras_sam.SAMModel`, `keras_sam.hessian`,
`keras_sam.callbacks`, ...) does not import this subpackage.
"""
