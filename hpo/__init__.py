"""hpo: hyperparameter search for fine-tuning pretrained models.

The package is split in three parts that do not import each other's internals:
the search (this package: spec, storage, runner, sampler, pruner, export),
the objectives (``objectives/``: data, model, training loop) and the edge
(``hpo.cli``), which is the only place that wires the two together.
"""

__version__ = "0.1.0"
