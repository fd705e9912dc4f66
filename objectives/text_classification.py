"""``task: text-classification``: single texts or text pairs, two or more classes."""

from objectives.data import LabelledRows
from objectives.heads import ClassificationHead
from objectives.task import Task
from objectives.text_inputs import TextInputs

TASK = Task("text-classification", LabelledRows(), TextInputs(), ClassificationHead())
