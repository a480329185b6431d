"""``python -m experiments.benchmark``: see :mod:`experiments.benchmark`."""

from absl import flags

import experiments.benchmark
from experiments import errors
from experiments.benchmark import options
from experiments.benchmark.cli import main

if __name__ == "__main__":
    __doc__ = experiments.benchmark.__doc__  # what --help prints
    flags.adopt_module_key_flags(options)
    errors.run_app(main)
