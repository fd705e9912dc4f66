"""Trial checkpoints on the demo model: what one costs, and how much work a preemption loses.

    python bench/checkpoints.py size       # bytes and seconds of one checkpoint: full fine-tuning and LoRA
    python bench/checkpoints.py preempt    # real `hpo launch` processes stopped by SIGTERM / kill -9, relaunched

``size`` trains the demo model (MiniLM-L6, 22.7M parameters) for a few steps
in each setting and takes a checkpoint as a trial does: capture (copy the
trainable weights, optimizer and RNG states to the CPU), serialize, write to
a folder store; then reads and restores it into a fresh model.

``preempt`` runs the demo study as one fixed trial (so every run trains the
same thing) through the CLI, stops it part way (SIGTERM after its second
evaluation point; kill -9 at the same moment), launches it again and reads
the study: examples the retry trained again (the work lost), SIGTERM to exit,
and whether the result equals an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, demo_study_file, table

FIXED = {"learning_rate": 1.0e-4, "batch_size": 16, "epochs": 2, "freeze_depth": 0, "warmup_ratio": 0.1}


def size(args) -> None:
    import optuna
    import torch

    from hpo import checkpoints
    from hpo.params import TrainingParams
    from hpo.spec import CheckpointSpec, parse_spec
    from objectives import build, loop_state
    from objectives.config import Hooks
    from objectives.results import TrainResult

    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="hpo-ckpt-bench-"))
    settings = [
        ("full fine-tuning, freeze_depth 0", "none", {"freeze_depth": 0}),
        ("full fine-tuning, freeze_depth 4", "none", {"freeze_depth": 4}),
        ("LoRA r 8, attention", "lora", {"lora_r": 8, "lora_target": "attention"}),
        ("LoRA r 16, all-linear", "lora", {"lora_r": 16, "lora_target": "all-linear"}),
    ]
    objectives = {}
    rows = []
    for label, adapter, values in settings:
        if adapter not in objectives:
            study = demo_study_file(f"sqlite:///{folder / 'unused.db'}", train=64, validation=32, max_length=64)
            if adapter == "lora":
                study["adapter"] = {"type": "lora"}
            objectives[adapter] = build(parse_spec(study))
        objective = objectives[adapter]
        params = TrainingParams.from_values({"learning_rate": 1e-4, "batch_size": 16, "epochs": 1, **values})
        model = objective.new_model(params, 0)
        taken = {}

        class Take:
            def boundary(self, at_point, capture):
                if "state" not in taken:
                    start = time.perf_counter()
                    taken["state"] = capture()
                    taken["capture"] = time.perf_counter() - start

        objective.train_model(model, params, 0, validation=None, hooks=Hooks(checkpoint=Take()), result=TrainResult())
        start = time.perf_counter()
        payload = loop_state.to_bytes(taken["state"])
        serialize = time.perf_counter() - start
        store = checkpoints.open_store(CheckpointSpec(store=str(folder / "store")))
        trial = optuna.create_study().ask()
        start = time.perf_counter()
        record = checkpoints.TrialCheckpoints(store, trial).save(payload, examples=16, points=0)
        write = time.perf_counter() - start
        objective.release(model)
        fresh = objective.new_model(params, 0)
        start = time.perf_counter()
        loop_state.check_fits(loop_state.from_bytes(checkpoints.read(store, record)), fresh)
        read = time.perf_counter() - start
        objective.release(fresh)
        trainable = sum(t.numel() for t in taken["state"]["model"].values())
        rows.append([label, f"{trainable / 1e6:.2f}M", f"{record.bytes / 1e6:.1f} MB", f"{taken['capture']:.3f}",
                     f"{serialize:.3f}", f"{write:.3f}", f"{read:.3f}"])
        store.remove(record.artifact_id)
    print(table(["setting", "trained weights", "checkpoint", "capture s", "serialize s", "write s", "read + check s"], rows))


def _study(folder: Path, name: str, checkpoints: bool) -> Path:
    study = demo_study_file(f"sqlite:///{folder / 'hpo.db'}", name=name, n_trials=1, train=400, validation=100,
                            max_length=64, search_space=dict(FIXED), pruner={"type": "none"})
    study["heartbeat"] = {"interval": 2, "grace_period": 6}
    study["runtime"] = {"num_threads": 2, "precision": "fp32"}
    if checkpoints:
        study["checkpoints"] = {"store": str(folder / "checkpoints")}
    path = folder / f"{name}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _trials(path: Path):
    import optuna
    import yaml

    spec = yaml.safe_load(path.read_text())
    try:
        return optuna.load_study(study_name=spec["name"], storage=spec["storage"]).trials
    except KeyError:
        return []


def _launch(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpo", "launch", str(path)], cwd=path.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_points(path: Path, process: subprocess.Popen, points: int) -> None:
    while process.poll() is None:
        found = _trials(path)
        if found and len(found[0].intermediate_values) >= points:
            return
        time.sleep(0.2)
    raise RuntimeError("the launch ended before it was stopped")


def preempt(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hpo-preempt-bench-"))
    reference = _study(folder, "uninterrupted", checkpoints=False)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "hpo", "launch", str(reference)], cwd=folder, check=True, capture_output=True)
    whole = _trials(reference)[0]
    print(f"uninterrupted: {whole.user_attrs['examples_seen']} examples, accuracy {whole.value:.4f}, "
          f"{time.monotonic() - start:.0f} s")
    rows = []
    for how in ("SIGTERM", "kill -9"):
        for checkpoints in (False, True):
            name = f"{'sigterm' if how == 'SIGTERM' else 'kill'}-{'ckpt' if checkpoints else 'none'}"
            path = _study(folder, name, checkpoints)
            process = _launch(path)
            _wait_for_points(path, process, args.points)
            time.sleep(args.delay)  # part way to the next point
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
            code = process.wait()
            exit_seconds = time.monotonic() - sent
            first = _trials(path)[0]
            reached = first.user_attrs.get("examples_seen", 0)  # kill -9: the last progress note (every 5 s)
            if how == "kill -9":
                time.sleep(8)  # past the heartbeat's grace period
            subprocess.run([sys.executable, "-m", "hpo", "launch", str(path)], cwd=folder, check=True, capture_output=True)
            retry = _trials(path)[-1]
            resumed = retry.user_attrs.get("resumed_at", 0)
            record = first.user_attrs.get("checkpoint") or {}
            rows.append([how, "yes" if checkpoints else "no", code, f"{exit_seconds:.2f}",
                         f"{'>= ' if how == 'kill -9' else ''}{reached}", resumed,
                         f"{'>= ' if how == 'kill -9' else ''}{max(0, reached - resumed)}",
                         f"{record.get('bytes', 0) / 1e6:.0f} MB" if record else "-",
                         f"{retry.value:.4f}", "yes" if abs(retry.value - whole.value) < 1e-6 else "no"])
    print(table(["stop", "checkpoints", "exit code", "stop to exit s", "examples at the stop", "retry resumed at",
                 "examples trained again", "checkpoint", "final accuracy", "= uninterrupted"], rows))
    print(json.dumps({"folder": str(folder)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["size", "preempt"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points", type=int, default=2, help="preempt: stop after this many evaluation points")
    parser.add_argument("--delay", type=float, default=5.0, help="preempt: seconds after that point")
    args = parser.parse_args()
    os.chdir(ROOT)
    size(args) if args.what == "size" else preempt(args)


if __name__ == "__main__":
    main()
