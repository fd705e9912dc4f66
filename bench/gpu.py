"""GPU benchmark: BERT-base from its config, bf16, against the plain loop; GPU utilisation; per-trial overhead.

    bash bench/gpu.sh                 # on a GPU machine (no internet needed)
    python bench/gpu.py --tiny        # the same code on a CPU with a 2-layer model: checks it runs

Nothing is downloaded: the model is BERT-base built from ``BertConfig()``
(random weights: throughput does not care), the tokenizer a WordPiece
vocabulary written here, the data synthetic texts with review-like lengths
(log-normal, median 60 words) in CSV files, read through hpo's own csv source.
Only hpo's own dependencies are needed (torch with CUDA, transformers,
datasets, optuna), not the demo packages.

Part 1: examples per second of hpo's loop against the plain loop (same
batches, per-batch padding, bf16 autocast on GPUs that support it), with the
GPU utilisation nvidia-smi reports while each runs. Part 2: a short study
through the real worker, split into training, evaluation and the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import demo_study, median, quiet, table

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_model(folder: Path, tiny: bool, vocab_words: int) -> Path:
    """A BERT (base, or 2 tiny layers) with random weights and a WordPiece tokenizer, saved like a checkpoint."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + [f"w{i}" for i in range(vocab_words)]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if tiny else {}
    config = BertConfig(vocab_size=len(tokenizer), num_labels=2, **size)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_data(folder: Path, n: int, vocab_words: int, seed: int, name: str) -> Path:
    """Texts of log-normal length (median 60 words); label 1 when low word ids dominate, so it is learnable."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(60), 0.7, n).astype(int), 4, 400)
    texts, labels = [], []
    for length in lengths:
        ids = rng.integers(0, vocab_words, length)
        texts.append(" ".join(f"w{i}" for i in ids))
        labels.append(int(np.mean(ids < vocab_words // 2) > 0.5))
    path = folder / f"{name}.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


class GpuWatch:
    """Samples nvidia-smi every 100 ms while inside; keeps the mean utilisation per name."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.available = shutil.which("nvidia-smi") is not None

    @contextlib.contextmanager
    def __call__(self, name: str):
        if not self.available:
            yield
            return
        process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            yield
        finally:
            process.terminate()
            out, _ = process.communicate()
            values = [float(v) for v in out.split() if v.strip().replace(".", "", 1).isdigit()]
            self.samples.setdefault(name, []).extend(values)

    def mean(self, name: str) -> str:
        values = self.samples.get(name)
        return f"{sum(values) / len(values):.0f}%" if values else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="2-layer model, few examples: a CPU check of the script")
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--validation", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--share", type=int, default=0, metavar="N",
                        help="part 3 only: N trials through hpo launch --gpus all, one worker per GPU against "
                             "--workers-per-gpu auto (issue 18: goal >= 80%% busy, wall <= 0.5)")
    args = parser.parse_args()
    if args.tiny:
        args.train, args.validation, args.repeats, args.trials = min(args.train, 64), min(args.validation, 32), 1, 2
    quiet(args.threads)

    import torch

    from overhead import split_worker_loop
    from throughput import compare
    from objectives import build

    vocab_words = 30000
    watch = GpuWatch()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = write_model(folder / "model", args.tiny, vocab_words)
        data = {
            "source": "csv", "train": str(write_data(folder, args.train, vocab_words, 0, "train")),
            "validation": str(write_data(folder, args.validation, vocab_words, 1, "validation")),
            "text_column": "text", "label_column": "label",
        }
        space = {
            "learning_rate": {"low": 1.0e-5, "high": 1.0e-4, "log": True}, "batch_size": args.batch_size,
            "epochs": 1, "freeze_depth": {"low": 0, "high": 2}, "warmup_ratio": 0.1,
        }

        def spec(name: str, n_trials: int = 1):
            return demo_study(
                f"sqlite:///{folder / 'gpu.db'}", name=name, n_trials=n_trials, model=str(model), data=data,
                train=args.train, validation=args.validation, max_length=args.max_length, search_space=space,
                pruner={"type": "none"}, sampler={"type": "tpe", "n_startup_trials": 2, "seed": 0},
            )

        if args.share:
            return share(args, folder, model, data, space, watch)
        objective = build(spec("throughput"))
        runtime = objective.runtime
        device = torch.cuda.get_device_name(0) if runtime.device.type == "cuda" else str(runtime.device)
        precision = "bf16 autocast" if runtime.autocast_dtype is not None else "fp32"
        print(f"device: {device}; {precision}; torch {torch.__version__}; model: BERT-{'tiny' if args.tiny else 'base'} "
              f"({sum(p.numel() for p in objective.pretrained.model.parameters()) / 1e6:.1f}M parameters)")
        print(f"{len(objective.train)} train / {len(objective.validation)} validation examples, max_length {args.max_length}, "
              f"batch {args.batch_size}\n", flush=True)

        rows, ratios = compare(objective, 0, args.batch_size, args.repeats, watch)
        print("\nPart 1: training throughput\n")
        print(table(["pair", "plain ex/s", "hpo ex/s", "hpo / plain"], rows))
        print(f"\nmedian hpo / plain: {median(ratios):.3f} (goal >= 0.95); GPU utilisation while training: "
              f"hpo {watch.mean('hpo')}, plain {watch.mean('plain')}\n", flush=True)
        del objective
        print("Part 2: per-trial overhead (real worker, SQLite, no pruner, 1 epoch per trial)\n")
        print(split_worker_loop(spec("overhead", args.trials), watch("study")))
        print(f"\nGPU utilisation over the whole worker loop: {watch.mean('study')}")


def share(args, folder: Path, model: Path, data: dict, space: dict, watch: GpuWatch) -> None:
    """Part 3: the same study launched as users do, one worker per GPU, then --workers-per-gpu auto."""
    import sys
    import time

    import yaml

    from common import demo_study_file

    rows = []
    for label, flags in (("one per GPU", []), ("auto", ["--workers-per-gpu", "auto"])):
        study = demo_study_file(f"sqlite:///{folder / (label.replace(' ', '-') + '.db')}", name=f"share-{len(rows)}",
                                n_trials=args.share, model=str(model), data=data, train=args.train,
                                validation=args.validation, max_length=args.max_length, search_space=space,
                                pruner={"type": "none"}, sampler={"type": "tpe", "n_startup_trials": 4, "seed": 0})
        path = folder / f"share-{len(rows)}.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        start = time.monotonic()
        with watch(label):
            launched = subprocess.run([sys.executable, "-m", "hpo", "launch", str(path), "--gpus", "all", *flags],
                                      capture_output=True, text=True)
        wall = time.monotonic() - start
        chosen = [line.split("] ", 1)[-1] for line in (launched.stdout + launched.stderr).splitlines() if "per GPU" in line]
        print(f"{label}: exit {launched.returncode}, {wall:.0f} s" + "".join(f"\n  {line}" for line in chosen), flush=True)
        rows.append([label, f"{wall:.0f}", watch.mean(label)])
    print("\nPart 3: " + f"{args.share} trials, one worker per GPU against --workers-per-gpu auto\n")
    print(table(["workers", "study wall s", "GPU busy"], rows))
    print(f"\nauto / one per GPU, wall: {float(rows[1][1]) / float(rows[0][1]):.2f} (goal <= 0.5; busy goal >= 80%)")


if __name__ == "__main__":
    main()
