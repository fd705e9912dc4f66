"""``task: causal-lm``: supervised fine-tuning of a decoder on prompt/completion or chat data.

Language-model inputs (completion-only labels, optional packing, the budget
counted in completion tokens) composed with the model's own next-token head;
everything else (the objective, the loop, adapters, pruning, retrain, export)
is what every task shares.
"""

from objectives.lm_data import PromptRows
from objectives.heads import LanguageModelHead
from objectives.lm_inputs import LanguageModelInputs
from objectives.task import Task

TASK = Task("causal-lm", PromptRows(), LanguageModelInputs(), LanguageModelHead())
