"""Data files shipped inside the package.

`cifar10_sample.npz` is a class-balanced CIFAR-10 sample (5,000 train and
1,000 test images) stored as JPEG bytes; load it with
`experiments.datasets.load_cifar10_sample()`. `make_cifar10_sample.py` is the
script that made it.
"""
