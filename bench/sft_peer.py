"""Issue 16: hpo's causal-lm search against TRL's SFTTrainer + PEFT LoRA scripted with Optuna.

    pip install -e ".[bench]"    # trl, accelerate
    python bench/sft_peer.py [--trials 6] [--train 160] [--validation 60] [--max-length 128] [--seeds 0 1 2] [--threads 1]

The model is a tiny Llama-style decoder pre-trained here on reviews
(``common.tiny_decoder_base``, cached); the data are other reviews as
prompt/completion pairs (``common.sft_files``: the review up to its last 8
words and a cue, then those 8 words). Both tools search the same space with
the same Optuna ``TPESampler(seed, n_startup_trials=3)``: learning rate
3e-4..3e-3 (log), batch size {4, 8} packed rows of ``--max-length`` tokens
(TRL: ``packing=True``, its BFD packing), epochs 1..2, LoRA rank {4, 8, 16}
with alpha = 2 x rank, dropout 0.05, all linear layers, warmup 10%, linear
decay, AdamW, no weight decay, fp32, the loss on completion tokens only.

The peer is scripted as users script it: a driver runs an Optuna study and
each trial is a new process (``--trial``) that loads the base model from
disk, builds ``SFTTrainer(peft_config=LoraConfig(...))``, trains, and returns
``trainer.evaluate()["eval_loss"]``; no pruning (the trainer has no Optuna
pruning hook). hpo runs ``hpo launch study.yaml`` with its defaults: the base
loaded once per worker, a fresh adapter per trial, two evaluation points
per epoch, the median pruner, a trial scored by its best point.

The two validation losses are not computed alike (the Trainer averages each
evaluation batch's token mean, weighted by examples), so every peer trial
also re-scores its final model as hpo does: the token-mean cross-entropy
over all completion tokens of the validation split, hpo's own encoding and
loss function. "peer best" is that re-scored loss of the trial the peer's
study picked. The peer's own ``eval_loss`` is lower than the re-scored loss
by about 0.05 here: with packing, TRL's padding-free evaluation batch is one
flattened row, so the Trainer's mean over "examples" is a mean of per-batch
token means, and the last, small batch weighs as much as a full one.
Time to best: from the start of each tool's process to the end of the trial
that gave its best loss; the last column is when hpo's best-so-far first got
to the peer's best loss. Goal: hpo <= 0.6 of the peer's time to best at an
equal or lower loss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median, quiet, sft_files, table, tiny_decoder_base

SPACE = {"lr": (3.0e-4, 3.0e-3), "batch": [4, 8], "epochs": (1, 2), "r": [4, 8, 16]}


def study(storage: str, args, files: dict[str, Path], model: Path) -> dict:
    return {
        "name": "sft-bench", "storage": storage, "n_trials": args.trials, "seed": 0, "model": str(model),
        "task": "causal-lm", "metric": "loss", "adapter": {"type": "lora"},
        "data": {"source": "json", "train": str(files["train"]), "validation": str(files["validation"]),
                 "test": str(files["test"]), "format": "prompt-completion", "max_length": args.max_length,
                 **({} if args.hpo_group_by_length else {"group_by_length": False})},
        "runtime": {"precision": "fp32", "num_threads": args.threads},
        "sampler": {"type": "tpe", "n_startup_trials": 3, "seed": args.tpe_seed},
        "pruner": {"type": "median", "n_startup_trials": 2},
        "search_space": {
            "learning_rate": {"low": SPACE["lr"][0], "high": SPACE["lr"][1], "log": True},
            "batch_size": {"choices": SPACE["batch"]},
            "epochs": {"low": SPACE["epochs"][0], "high": SPACE["epochs"][1]},
            "lora_r": {"choices": SPACE["r"]},
            "lora_alpha_ratio": 2.0, "lora_dropout": 0.05, "lora_target": "all-linear",
            "warmup_ratio": 0.1, "weight_decay": 0.0,
        },
    }


def trial_line(number, state, value, seconds, params, extra="") -> str:
    shown = " ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return f"{number} {state} {value if value is None else f'{value:.4f}'} {seconds:.0f}s {shown} {extra}"


def run_hpo(args, tmp: str, files, model) -> dict:
    """``hpo launch study.yaml``, as a user types it; the clock covers the worker's imports too."""
    import optuna
    import yaml

    path = Path(tmp) / "study.yaml"
    path.write_text(yaml.safe_dump(study(f"sqlite:///{tmp}/hpo.db", args, files, model)))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    started = time.time()
    subprocess.run([sys.executable, "-m", "hpo", "launch", str(path), "--quiet"], cwd=tmp, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.time() - started
    trials = [t for t in optuna.load_study(study_name="sft-bench", storage=f"sqlite:///{tmp}/hpo.db").trials
              if t.state.is_finished()]
    best = min((t for t in trials if t.value is not None), key=lambda t: t.value)
    done = sorted((t for t in trials if t.value is not None and t.state.name == "COMPLETE"), key=lambda t: t.datetime_complete)
    return {"wall": wall, "to_best": best.datetime_complete.timestamp() - started, "best": best.value,
            "curve": [(t.datetime_complete.timestamp() - started, t.value) for t in done],
            "params": best.params, "pruned": sum(t.state.name == "PRUNED" for t in trials), "trials": len(trials),
            "each": [trial_line(t.number, t.state.name.lower(), t.value,
                                (t.datetime_complete - t.datetime_start).total_seconds(), t.params) for t in trials]}


def run_peer(args, tmp: str, files, model) -> dict:
    """The driver: an Optuna study whose objective launches one trial process."""
    import optuna

    started = time.time()
    finished: dict[int, tuple[float, float]] = {}  # trial -> (seconds since start, re-scored loss)

    def objective(trial: optuna.Trial) -> float:
        params = {  # suggested in hpo's order (by name), so that the same seed draws the same startup trials
            "batch_size": trial.suggest_categorical("batch_size", SPACE["batch"]),
            "epochs": trial.suggest_int("epochs", *SPACE["epochs"]),
            "learning_rate": trial.suggest_float("learning_rate", *SPACE["lr"], log=True),
            "lora_r": trial.suggest_categorical("lora_r", SPACE["r"]),
        }
        out = subprocess.run([sys.executable, __file__, "--trial", json.dumps(params), f"--model={model}",
                              f"--train={args.train}", f"--validation={args.validation}",
                              f"--max-length={args.max_length}", f"--threads={args.threads}", f"--out={tmp}/t{trial.number}"],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            raise RuntimeError(f"peer trial failed:\n{out.stderr[-3000:]}")
        result = json.loads(lines[-1][len("RESULT "):])
        finished[trial.number] = (time.time() - started, result["token_mean"])
        trial.set_user_attr("token_mean", result["token_mean"])
        return result["eval_loss"]

    sampler = optuna.samplers.TPESampler(seed=args.tpe_seed, n_startup_trials=3)
    peer = optuna.create_study(direction="minimize", sampler=sampler)
    peer.optimize(objective, n_trials=args.trials)
    wall = time.time() - started
    best = peer.best_trial
    return {"wall": wall, "to_best": finished[best.number][0], "best": best.user_attrs["token_mean"],
            "curve": [finished[number] for number in sorted(finished)],
            "trainer_loss": best.value, "params": best.params, "pruned": 0, "trials": len(peer.trials),
            "each": [trial_line(t.number, t.state.name.lower(), t.user_attrs.get("token_mean"),
                                (t.datetime_complete - t.datetime_start).total_seconds(), t.params,
                                f"(trainer eval_loss {t.value:.4f})") for t in peer.trials]}


def token_mean_loss(model, tokenizer, rows: list[dict], max_length: int) -> float:
    """hpo's validation loss: its encoding (prompt, completion, eos; labels on the completion) and
    its loss function, summed over every completion token of the split, divided by their count."""
    import torch

    from hpo.spec import DataSpec
    from objectives.heads import _token_losses
    from objectives.lm_inputs import LanguageModelBatches, encode_row

    data = DataSpec(source="json", format="prompt-completion", max_length=max_length)
    encoded = [encode_row(row, tokenizer, data) for row in rows]
    batches = LanguageModelBatches([e[0] for e in encoded], [e[1] for e in encoded], tokenizer.pad_token_id, False, max_length)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(batches), 32):
            batch = batches.batch(list(range(start, min(start + 32, len(batches)))), torch.device("cpu"))
            labels = batch.pop("labels")
            loss, n = _token_losses(model(**batch).logits, labels)
            total, count = total + float(loss), count + int(n)
    return total / count


def peer_trial(args) -> None:
    """One trial as a TRL user writes it: load the base, SFTTrainer with a LoRA config, train, evaluate."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    start = time.perf_counter()
    params = json.loads(args.trial)
    files = sft_files(args.train, args.validation)
    data = load_dataset("json", data_files={"train": str(files["train"]), "validation": str(files["validation"])})
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    config = SFTConfig(
        output_dir=args.out, learning_rate=params["learning_rate"], per_device_train_batch_size=params["batch_size"],
        num_train_epochs=params["epochs"], warmup_steps=0.1, lr_scheduler_type="linear", weight_decay=0.0,
        max_length=args.max_length, packing=True, completion_only_loss=True, eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )
    lora = LoraConfig(r=params["lora_r"], lora_alpha=2 * params["lora_r"], lora_dropout=0.05, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=data["train"], eval_dataset=data["validation"],
                         processing_class=tokenizer, peft_config=lora)
    trainer.train()
    eval_loss = trainer.evaluate()["eval_loss"]
    token_mean = token_mean_loss(trainer.model, tokenizer, list(data["validation"]), args.max_length)
    print("RESULT " + json.dumps({"eval_loss": eval_loss, "token_mean": token_mean, "seconds": time.perf_counter() - start,
                                  "threads": torch.get_num_threads()}))


def _running_best(curve):
    """(seconds, best loss so far) after each finished trial, in the order they finished."""
    best = float("inf")
    for seconds, value in sorted(curve):
        best = min(best, value)
        yield seconds, best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="TPE seeds; one run of each tool per seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each tool")
    parser.add_argument("--no-hpo-grouping", dest="hpo_group_by_length", action="store_false",
                        help="hpo's data.group_by_length: false; since packed causal-lm rows are never grouped "
                             "(their default), this changes nothing for packed runs and is kept for unpacked ones")
    parser.add_argument("--tpe-seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--run", choices=["hpo", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--trial", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        quiet(args.threads)
        return peer_trial(args)
    model, files = tiny_decoder_base(), sft_files(args.train, args.validation)
    if args.run:
        quiet(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            result = (run_hpo if args.run == "hpo" else run_peer)(args, tmp, files, model)
        print("RESULT " + json.dumps(result))
        return

    forwarded = [f"--trials={args.trials}", f"--train={args.train}", f"--validation={args.validation}",
                 f"--max-length={args.max_length}", f"--threads={args.threads}"] + \
        ([] if args.hpo_group_by_length else ["--no-hpo-grouping"])
    rows, ratios = [], []
    for i, seed in enumerate(args.seeds):
        order = ("hpo", "peer") if i % 2 == 0 else ("peer", "hpo")
        results = {}
        for tool in order:
            out = subprocess.run([sys.executable, __file__, "--run", tool, f"--tpe-seed={seed}", *forwarded],
                                 capture_output=True, text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not lines:
                sys.exit(f"{tool} failed:\n{out.stderr[-3000:]}")
            results[tool] = json.loads(lines[-1][len("RESULT "):])
            each = results[tool].pop("each", [])
            print(f"seed {seed}", tool, results[tool], *("   " + line for line in each), sep="\n", flush=True)
        hpo, peer = results["hpo"], results["peer"]
        ratio = hpo["to_best"] / peer["to_best"]
        ratios.append(ratio)
        reached = next((seconds for seconds, best in _running_best(hpo["curve"]) if best <= peer["best"]), None)
        rows.append([seed, f"{hpo['to_best']:.0f}", f"{peer['to_best']:.0f}", f"{ratio:.2f}", f"{hpo['wall']:.0f}",
                     f"{peer['wall']:.0f}", f"{hpo['best']:.4f}", f"{peer['best']:.4f}", f"{peer['trainer_loss']:.4f}",
                     hpo["pruned"], "not reached" if reached is None else f"{reached:.0f}"])
    print()
    print(table(["TPE seed", "hpo s to best", "peer s to best", "hpo / peer", "hpo wall s", "peer wall s",
                 "hpo best loss", "peer best loss (re-scored)", "peer's own eval_loss", "hpo pruned", "hpo s to the peer's best loss"], rows))
    print(f"\nmedian ratio of time to best, hpo / peer: {median(ratios):.2f} (goal <= 0.6 at an equal or lower loss)")


if __name__ == "__main__":
    main()
