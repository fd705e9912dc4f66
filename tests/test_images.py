"""``task: image-classification`` on tiny ViT and ResNet models built from configs, with generated images."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import optuna
import pytest
import torch
import yaml

from hpo.params import TrainingParams
from hpo.spec import parse_spec
from objectives import build, freezing

from conftest import hpo

pytestmark = pytest.mark.slow


def _picture(rng, channel: int):
    from PIL import Image

    pixels = rng.integers(0, 90, (40, 40, 3)).astype(np.uint8)
    pixels[..., channel] += 150  # red or blue dominates: learnable in a few steps
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """images/<split>/<red|blue>/<n>.png, plus a CSV listing train with relative paths."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("validation", 10), ("test", 6)):
        for name, channel in (("red", 0), ("blue", 2)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                _picture(rng, channel).save(folder / f"{i}.png")
    for split in ("train", "validation"):
        with open(root / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "colour"])
            for path in sorted((root / split).rglob("*.png")):
                writer.writerow([str(path.relative_to(root)), path.parent.name])
    return root


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory):
    """A 2-block ViT and a 2-stage ResNet (ImageNet-sized head: 1,000 classes), each with its processor."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("vision")
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    torch.manual_seed(0)
    models = {
        "vit": ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=64, num_labels=2)),
        "resnet": ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=1000)),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return {name: root / name for name in models}


def _study(model, data, tmp_path, **overrides):
    study = {
        "name": "pictures", "storage": f"sqlite:///{tmp_path / 'hpo.db'}", "n_trials": 2, "seed": 0,
        "model": str(model), "task": "image-classification", "data": data,
        "sampler": {"type": "random"}, "runtime": {"num_threads": 1}, "evaluation": {"points_per_epoch": 1},
        "search_space": {"learning_rate": {"low": 3.0e-3, "high": 1.0e-2, "log": True}, "batch_size": 8, "epochs": 2,
                         "freeze_depth": {"low": 0, "high": 1}},
    }
    study.update(overrides)
    return study


def test_vit_on_an_image_folder_launches_and_learns(images, vision_models, tmp_path):
    data = {"source": "imagefolder", "train": str(images / "train"), "validation": str(images / "validation"),
            "test": str(images / "test"), "label_column": "label"}
    path = tmp_path / "vit.yaml"
    path.write_text(yaml.safe_dump(_study(vision_models["vit"], data, tmp_path)))
    validated = hpo("validate", str(path), "--offline", cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert "labels    train: blue 24 (50%), red 24 (50%)" in validated.stdout
    launched = hpo("launch", str(path), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    study = optuna.load_study(study_name="pictures", storage=f"sqlite:///{tmp_path / 'hpo.db'}")
    assert len([t for t in study.trials if t.state.is_finished()]) == 2
    assert study.best_value >= 0.9, [t.user_attrs.get("best_metrics") for t in study.trials]
    assert study.user_attrs["label_names"] == ["blue", "red"] and study.user_attrs["model_depth"] == 2
    assert study.user_attrs["data_report"]["splits"]["validation"]["used"] == 20

    retrained = hpo("retrain", str(path), "--seeds", "0", cwd=tmp_path)
    assert retrained.returncode == 0, retrained.stderr
    model_dir = tmp_path / "retrained" / "pictures" / "model"
    assert (model_dir / "preprocessor_config.json").is_file(), "the image processor is saved with the model"


def test_resnet_from_a_csv_of_paths_freezes_the_stem_and_bottom_stage(images, vision_models, tmp_path):
    data = {"source": "csv", "train": str(images / "train.csv"), "validation": str(images / "validation.csv"),
            "image_column": "file", "label_column": "colour"}
    objective = build(parse_spec(_study(vision_models["resnet"], data, tmp_path)))
    assert objective.depth == 2 and objective.label_names == ["blue", "red"]
    params = TrainingParams(learning_rate=5e-3, batch_size=8, epochs=1, freeze_depth=1)
    model = objective.new_model(params, 0)
    assert model.classifier[1].out_features == 2, "the 1,000-class head is replaced"
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    objective.train_model(model, params, 0)
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        frozen = name.startswith(("resnet.embedder.", "resnet.encoder.stages.0."))
        # Weights and batch-norm running statistics alike: a frozen stage stays the pretrained one.
        assert torch.equal(before[name], value) == frozen, name


def test_duplicates_and_leaks_are_found_by_image_content(images, vision_models, tmp_path):
    train, validation = tmp_path / "train", tmp_path / "validation"
    shutil.copytree(images / "train", train)
    shutil.copytree(images / "validation", validation)
    shutil.copy(train / "red" / "0.png", train / "red" / "copy-of-0.png")  # a duplicate under another name
    shutil.copy(train / "blue" / "1.png", validation / "blue" / "seen-in-train.png")  # a leak
    data = {"source": "imagefolder", "train": str(train), "validation": str(validation)}
    spec = parse_spec(_study(vision_models["vit"], data, tmp_path))
    objective = build(spec)
    report = objective.data_report["splits"]
    assert (report["train"]["read"], report["train"]["duplicates"], report["train"]["used"]) == (49, 1, 48)
    assert (report["validation"]["read"], report["validation"]["leaking"], report["validation"]["used"]) == (21, 1, 20)


def test_augmentation_is_switchable(images, vision_models, tmp_path):
    data = {"source": "imagefolder", "train": str(images / "train"), "validation": str(images / "validation")}
    augmented = build(parse_spec(_study(vision_models["vit"], data, tmp_path)))
    plain = build(parse_spec(_study(vision_models["vit"], {**data, "augment": False}, tmp_path)))
    cpu = torch.device("cpu")
    draws = [augmented.train.batch([0, 1, 2], cpu)["pixel_values"] for _ in range(2)]
    assert not torch.equal(*draws), "random crops and flips differ between draws"
    assert torch.equal(plain.train.batch([0, 1, 2], cpu)["pixel_values"], plain.train.batch([0, 1, 2], cpu)["pixel_values"])
    assert torch.equal(augmented.validation.batch([0], cpu)["pixel_values"], plain.validation.batch([0], cpu)["pixel_values"]), \
        "validation images are never augmented"


def test_images_stored_in_the_data_file_as_hub_datasets_ship_them(images, vision_models, tmp_path):
    """A parquet file with an Image column (bytes inside, as on the hub) reads, dedupes and trains."""
    import datasets

    for split in ("train", "validation"):
        paths = sorted((images / split).rglob("*.png"))
        rows = {"image": [{"bytes": p.read_bytes(), "path": None} for p in paths], "label": [p.parent.name for p in paths]}
        features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
        table = datasets.Dataset.from_dict(rows, features=features)
        table.to_parquet(str(tmp_path / f"{split}.parquet"))
    data = {"source": "parquet", "train": str(tmp_path / "train.parquet"), "validation": str(tmp_path / "validation.parquet")}
    objective = build(parse_spec(_study(vision_models["vit"], data, tmp_path)))
    assert objective.data_report["splits"]["train"]["used"] == 48
    params = TrainingParams(learning_rate=5e-3, batch_size=8, epochs=1, freeze_depth=0)
    result = objective.train_model(objective.new_model(params, 0), params, 0, validation=objective.validation)
    assert result.best is not None and math.isfinite(result.train_loss)


VISION_FAMILIES = {
    "resnet": ("ResNetConfig", "ResNetForImageClassification", dict(embedding_size=8, hidden_sizes=[8, 16, 24], depths=[1, 1, 1]), ("ResNetStage", "embedder")),
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification", dict(num_stages=3, hidden_sizes=[8, 16, 24], depths=[1, 1, 2]), ("ConvNextStage", "embeddings")),
    "vit": ("ViTConfig", "ViTForImageClassification", dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64), ("ViTLayer", "embeddings")),
    "swin": ("SwinConfig", "SwinForImageClassification", dict(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 1], window_size=2), ("SwinStage", "embeddings")),
}


@pytest.mark.parametrize("family", sorted(VISION_FAMILIES))
def test_stages_or_blocks_are_found_in_every_vision_family(family):
    import transformers

    config_name, model_name, sizes, (layer_type, stem) = VISION_FAMILIES[family]
    model = getattr(transformers, model_name)(getattr(transformers, config_name)(num_labels=2, **sizes))
    assert freezing.depth(model) == 3 and type(freezing.layer_stack(model)[0]).__name__ == layer_type
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(f".{stem}." in names[id(p)] for p in freezing.embedding_parameters(model))
    freezing.freeze(model, 3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("classifier") or ".encoder." not in n for n in trainable), trainable


def test_vit_with_lora_adapters_on_its_attention(images, vision_models, tmp_path):
    """The same adapter dimensions on a vision transformer: adapters land in its attention, the head trains."""
    data = {"source": "imagefolder", "train": str(images / "train"), "validation": str(images / "validation")}
    study = _study(vision_models["vit"], data, tmp_path, adapter={"type": "lora"})
    study["search_space"] = {"learning_rate": 1.0e-2, "batch_size": 8, "epochs": 2, "lora_r": 4, "lora_target": "attention"}
    path = tmp_path / "vit-lora.yaml"
    path.write_text(yaml.safe_dump(study))
    launched = hpo("launch", str(path), cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr
    trials = optuna.load_study(study_name="pictures", storage=study["storage"]).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], [t.user_attrs.get("fail_reason") for t in trials]
    adapter = trials[0].user_attrs["adapter"]
    # transformers 5 names them q/k/v/o_proj (4.x: attention.attention.query ... attention.output.dense)
    assert set(adapter["target_modules"]) == {"attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"}
    assert adapter["trained_head_modules"] == ["classifier"]
