"""Objective for ``task: text-regression``: single texts or pairs with a numeric label (STS-B-like).

Everything but the head and the loss is text classification's: the same
data hygiene, tokenization cache, freezing, training loop, evaluation points,
pruning and retraining. The head has one output with ``problem_type:
regression``, which the training loop turns into mean squared error and the
evaluation into rmse, mae, r2 and spearman.
"""

from __future__ import annotations

from objectives.text_classification import TextClassification, check  # noqa: F401 - check is this task's too


class TextRegression(TextClassification):
    regression = True
