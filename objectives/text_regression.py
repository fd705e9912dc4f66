"""``task: text-regression``: single texts or pairs with a numeric label (STS-B-like).

Text classification's inputs with a regression head: one output, mean squared
error, and rmse, mae, r2 and spearman at evaluation.
"""

from objectives.data import LabelledRows
from objectives.heads import RegressionHead
from objectives.task import Task
from objectives.text_inputs import TextInputs

TASK = Task("text-regression", LabelledRows(), TextInputs(), RegressionHead())
