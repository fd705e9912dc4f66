"""``hpo validate STUDY``: check a study file and show what it would search."""

from __future__ import annotations

import argparse

from hpo import storage
from hpo.datareport import format_report
from hpo.cli import common, preflight
from hpo.params import CONDITIONS
from hpo.spec import Choices, Range, StudySpec


def add_parser(sub) -> None:
    parser = sub.add_parser("validate", help="check study files and print a summary of each study and search space")
    parser.add_argument("study", nargs="+", help="the study file (study.yaml); several: each in turn, stopping at the first bad one")
    parser.add_argument("--storage", help="database URL overriding the study file's and HPO_STORAGE")
    parser.add_argument("--offline", action="store_true", help="skip the database connection check")
    parser.set_defaults(handler=run)


def describe_dimension(dim) -> str:
    if isinstance(dim, Range):
        kind = "int" if dim.is_int else "float"
        scale = ", log" if dim.log else (f", step {dim.step}" if dim.step else "")
        return f"{kind} [{dim.low}, {dim.high}{scale}]"
    if isinstance(dim, Choices):
        return "one of " + ", ".join(map(str, dim.choices))
    return f"fixed {dim}"


def _condition(name: str) -> str:
    if name not in CONDITIONS:
        return ""
    parent, value = CONDITIONS[name]
    return f" (only when {parent} is {value})"


def _columns(spec: StudySpec) -> str:
    data = spec.data
    if data.format == "messages":
        return f"chat {data.messages_column} (tokenizer's chat template); packing {'on' if data.packing else 'off'}"
    if data.format == "prompt-completion":
        return (f"prompt {data.prompt_column}, completion {data.completion_column}; packing {'on' if data.packing else 'off'}; "
                f"too long: {'drop' if data.truncation == 'drop' else 'cut the prompt'}")
    if data.image_column:
        return f"image {data.image_column}; label {data.label_column}"
    return f"text {', '.join(data.text_columns)}; label {data.label_column}"


def summary(spec: StudySpec) -> str:
    data = spec.data
    where = f"{data.path}{'/' + data.name if data.name else ''}" if data.source == "hub" else data.source
    lines = [
        f"study     {spec.name}",
        f"storage   {storage.mask_url(spec.storage)}",
        f"budget    {spec.n_trials} finished trials" + (f", timeout {spec.timeout:g}s" if spec.timeout else ""),
        f"model     {spec.model}  ({spec.task})",
        f"data      {where}; {_columns(spec)}; max_length {data.max_length}",
        f"metric    {spec.metric} ({spec.direction})",
        f"sampler   {spec.sampler.type} {common.format_params(spec.sampler.options)}".rstrip(),
        f"pruner    {spec.pruner.type} {common.format_params(spec.pruner.options)}".rstrip(),
        f"adapter   {spec.adapter.type}" + ("" if spec.adapter.type == "none" else " (base frozen and loaded once per worker; head trains)"),
        "",
        common.table(
            ["dimension", "searched as"],
            [[name, describe_dimension(dim) + _condition(name)] for name, dim in spec.search_space.items()],
        ),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    for index, study in enumerate(args.study):
        if index:
            print()
        _validate(argparse.Namespace(**{**vars(args), "study": study}))
    return 0


def _validate(args: argparse.Namespace) -> None:
    spec = common.load(args)
    preflight.check_search_options(spec, args.study)
    storage.parse_url(spec.storage)
    if not args.offline:
        preflight.check_storage(spec)
        changed = preflight.check_resume(spec)  # what launch would refuse, refused here too
    facts = dict(preflight.check_objective(spec))
    report = facts.pop("data_report", None)
    adapter = facts.pop("adapter_table", None)
    print(summary(spec))
    print()
    print("checked   " + common.format_params(facts))
    if adapter:
        print()
        print(f"trainable parameters with adapter {spec.adapter.type} (smallest and largest lora_r, head included):")
        print(common.table(["lora_target", "lora_r", "trainable", "% of model"], adapter))
    if report:
        print()
        print(format_report(report))
        print()
    if not args.offline and changed:
        print(f"resumes   study {spec.name!r} with changes: {'; '.join(changed)}")
    print(f"{args.study}: valid")
