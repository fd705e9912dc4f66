"""LoRA per-trial set-up: hpo's fresh adapter on the one base against Trainer's model_init reload.

    python bench/lora_setup.py [--sizes minilm large] [--cycles 8] [--repeats 3] [--threads 1]
                               [--large-layers 24 --large-hidden 1024] [--large-train 32]

For each model size, in its own process (so its memory is its own):

* hpo: the worker's objective (``adapter: lora``) loads the base once; a
  trial's set-up is ``new_model`` (a fresh PEFT adapter, seeded, on the shared
  base) plus its adapter facts, and ``release`` (adapter removed, head and
  flags put back) plus the collector pass every trial ends with.
* peer: ``Trainer`` with ``model_init`` = ``from_pretrained`` + ``get_peft_model``
  (the same LoRA config: target modules, rank, alpha, dropout, trained head
  modules), and per trial exactly what ``Trainer.train`` does before its first
  step when ``model_init`` is set: ``set_seed``, ``call_model_init``, drop the
  optimizer, move the model to the device.

hpo's ``--cycles`` set-ups come first (drawing ranks 4/8/16 and each
target in turn), tracking resident memory (it must not grow with trials)
and checking that the frozen weights of each adapted model are the base's
own tensors and that the base is bit-identical afterwards; the peer's
``--repeats`` set-ups come after, in the same process. They are not
interleaved: the peer's loaded models would sit in the heap that hpo's
end-of-trial collector pass scans, which a real worker never has, and the
two differ by far more than the machine's noise. A trial (hpo's own loop with its
validation) is then timed once per size, to give set-up as a share of a
trial. ``minilm`` is the demo's MiniLM-L6 (22.7M parameters); ``large`` is a
BERT built from a config (24 layers x 1024 by default, ~335M parameters,
random weights) saved to a temporary folder with MiniLM's tokenizer, so that
both tools read it from disk as a user's checkpoint. Its trial is shorter
(``--large-train`` reviews, stated in the output). Goal: hpo's set-up under
1% of a trial and flat in model size.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import lora_study, median, quiet, table

LORA_SPACE = {
    "learning_rate": 1.0e-3, "batch_size": 16, "epochs": 1, "warmup_ratio": 0.1,
    "lora_r": 8, "lora_alpha_ratio": 2, "lora_dropout": 0.05, "lora_target": "all-linear",
}


def rss_mb() -> tuple[float, float]:
    """(resident, peak resident) of this process, MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def tensor_mb(model) -> float:
    """Bytes of the distinct storages behind a model's parameters and buffers, MiB."""
    seen = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / 2**20


def digest(model) -> str:
    hasher = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(value.detach().contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return hasher.hexdigest()[:16]


def large_checkpoint(folder: Path, layers: int, hidden: int) -> str:
    """A BERT of the given shape with random weights, saved as a user's checkpoint (with MiniLM's tokenizer)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from objectives.model import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("demo"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=hidden // 64, intermediate_size=4 * hidden, max_position_embeddings=512)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def measure(args, size: str) -> dict:
    quiet(args.threads)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, set_seed

    from hpo.params import TrainingParams
    from objectives import build
    from objectives.adapters import targets
    from objectives.model import resolve
    from objectives.trial_notes import release_memory

    with tempfile.TemporaryDirectory() as tmp:
        path = resolve("demo") if size == "minilm" else large_checkpoint(Path(tmp) / "large", args.large_layers, args.large_hidden)
        train = args.train if size == "minilm" else args.large_train
        validation = args.validation if size == "minilm" else args.large_validation
        spec = lora_study(f"sqlite:///{tmp}/bench.db", model=path, train=train, validation=validation,
                          max_length=args.max_length, points_per_epoch=1, search_space=dict(LORA_SPACE))
        rss_before = rss_mb()[0]
        load_start = time.perf_counter()
        objective = build(spec)
        load_seconds = time.perf_counter() - load_start
        base = objective.pretrained.model
        parameters = sum(p.numel() for p in base.parameters())
        base_mb = tensor_mb(base)
        before = digest(base)
        rss_loaded = rss_mb()[0]
        labels = objective.label_names
        heads = objective.models.heads

        # hpo: trials' set-ups, tracking memory. Trials draw different ranks and targets.
        variants = [dict(lora_r=r, lora_target=t) for r in (4, 8, 16) for t in ("attention", "mlp", "all-linear")]
        hpo_attach, hpo_release, rss_after = [], [], []
        shared_ok = True
        for cycle in range(args.cycles):
            params = TrainingParams.from_values({**LORA_SPACE, **variants[cycle % len(variants)]})
            start = time.perf_counter()
            model = objective.new_model(params, seed=cycle)
            objective.models.facts(model, params)
            attached = time.perf_counter()
            base_ptrs = {p.data_ptr() for p in base.parameters()}
            frozen = [p for p in model.parameters() if not p.requires_grad]
            shared_ok &= all(p.data_ptr() in base_ptrs for p in frozen)
            extra_mb = tensor_mb(model) - base_mb
            again = time.perf_counter()
            objective.release(model)
            del model, frozen
            release_memory(objective.runtime)
            done = time.perf_counter()
            hpo_attach.append(attached - start)
            hpo_release.append(done - again)
            rss_after.append(round(rss_mb()[0], 1))
        after = digest(base)
        rss_hpo_peak = rss_mb()[1]

        # One trial: hpo's loop on a LoRA model, with its validation.
        params = TrainingParams.from_values(LORA_SPACE)
        model = objective.new_model(params, seed=0)
        trial_start = time.perf_counter()
        result = objective.train_model(model, params, seed=0, validation=objective.validation)
        trial_seconds = time.perf_counter() - trial_start
        objective.release(model)
        del model
        release_memory(objective.runtime)

        # The peer: Trainer + model_init, reloading the checkpoint every trial.
        target_names = [t.name for t in targets(base, "all-linear")]

        def model_init(trial=None):
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)})
            config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=target_names,
                                modules_to_save=heads, bias="none")
            return get_peft_model(model, config)

        training_args = TrainingArguments(output_dir=f"{tmp}/peer", save_strategy="no", logging_strategy="no",
                                          report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
        trainer = Trainer(model_init=model_init, args=training_args, train_dataset=[{"input_ids": [0]}])

        def peer_setup() -> float:
            start = time.perf_counter()
            set_seed(training_args.seed)
            trainer.model = trainer.call_model_init(None)  # Trainer.train: the old model goes only now
            trainer.optimizer, trainer.lr_scheduler = None, None
            trainer._move_model_to_device(trainer.model, training_args.device)
            trainer.model_wrapped = trainer.model
            return time.perf_counter() - start

        peer = [peer_setup() for _ in range(args.repeats)]
        rss_peer_peak = rss_mb()[1]
        del trainer
        gc.collect()

    return {
        "size": size, "parameters": parameters, "base_mb": round(base_mb, 1), "load_s": round(load_seconds, 2),
        "hpo_attach_s": [round(s, 4) for s in hpo_attach], "hpo_release_s": [round(s, 4) for s in hpo_release],
        "peer_setup_s": [round(s, 3) for s in peer],
        "adapter_extra_mb": round(extra_mb, 2), "frozen_shared": shared_ok, "base_identical": before == after,
        "rss_before_mb": round(rss_before, 1), "rss_loaded_mb": round(rss_loaded, 1), "rss_after_cycles_mb": rss_after,
        "rss_hpo_peak_mb": round(rss_hpo_peak, 1), "rss_peer_peak_mb": round(rss_peer_peak, 1),
        "trial_s": round(trial_seconds, 2), "trial_train": train, "trial_validation": validation,
        "trial_examples_per_s": round(result.examples_per_second, 2), "trial_eval_s": round(result.eval_seconds, 2),
        "threads": torch.get_num_threads(), "precision": objective.runtime.precision,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["minilm", "large"], choices=["minilm", "large"])
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--validation", type=int, default=250)
    parser.add_argument("--large-layers", type=int, default=24)
    parser.add_argument("--large-hidden", type=int, default=1024)
    parser.add_argument("--large-train", type=int, default=32)
    parser.add_argument("--large-validation", type=int, default=32)
    parser.add_argument("--run", choices=["minilm", "large"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print("RESULT " + json.dumps(measure(args, args.run)), flush=True)
        return
    forwarded = [a for a in sys.argv[1:]]
    results = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, *forwarded, "--run", size], capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.exit(f"{size} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(json.dumps(results[-1]), flush=True)
    rows = []
    for r in results:
        hpo_s = median([a + b for a, b in zip(r["hpo_attach_s"], r["hpo_release_s"])])
        peer_s = median(r["peer_setup_s"])
        rows.append([
            r["size"], f"{r['parameters'] / 1e6:.1f}M", f"{r['base_mb']:.0f}", f"{hpo_s * 1000:.0f} ms", f"{peer_s:.2f} s",
            f"{peer_s / hpo_s:.0f}x", f"{r['trial_s']:.1f} s ({r['trial_train']} + {r['trial_validation']} val)",
            f"{100 * hpo_s / r['trial_s']:.2f}%", f"{100 * peer_s / r['trial_s']:.1f}%",
            f"{r['rss_loaded_mb']:.0f} -> {min(r['rss_after_cycles_mb']):.0f}..{max(r['rss_after_cycles_mb']):.0f}",
            f"{r['rss_hpo_peak_mb']:.0f} / {r['rss_peer_peak_mb']:.0f}",
            "yes" if r["base_identical"] and r["frozen_shared"] else "NO",
        ])
    print()
    print(table(["model", "params", "base MiB", "hpo set-up", "peer set-up", "peer / hpo", "trial (hpo)",
                 "hpo share", "peer share", "RSS loaded -> after each trial MiB", "peak RSS hpo / +peer MiB",
                 "base shared, bit-identical"], rows))
    if len(results) == 2:
        a, b = (median([x + y for x, y in zip(r["hpo_attach_s"], r["hpo_release_s"])]) for r in results)
        print(f"\nhpo set-up {results[1]['size']} / {results[0]['size']}: {b / a:.2f}x for "
              f"{results[1]['parameters'] / results[0]['parameters']:.1f}x the parameters (goal: flat; under 1% of a trial)")


if __name__ == "__main__":
    main()
