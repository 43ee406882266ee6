"""tools/finetune.py and the SOLVER.TUNING_HIGHLEVEL_OVERRIDE presets, on the synthetic model and dataset."""
import csv
import os

import pytest
import yaml
from helpers import ROOT, load_tool

from maskrcnn_benchmark.config import get_cfg_defaults
from maskrcnn_benchmark.config.tuning_presets import TUNING_PRESETS, apply_tuning_preset
from maskrcnn_benchmark.data.datasets.synthetic import generate_synthetic_dataset
from maskrcnn_benchmark.modeling.detector import build_detection_model
from maskrcnn_benchmark.utils.checkpoint import read_checkpoint

SYNTHETIC = ROOT / "configs" / "synthetic" / "glip_synthetic.yaml"
LINEAR_PROB_KEYS = ("bbox_pred", "cls_logits", "centerness", "cosine_scale", "dot_product_projection_text",
                    "head.log_scale", "head.bias_lang", "head.bias0")


def officially_trainable(name: str, cfg) -> bool:
    """The official finetune.py freeze rules for one parameter name (the unused cls_logits conv: always frozen)."""
    if name.startswith("backbone.body."):
        return not cfg.MODEL.BACKBONE.FREEZE
    if name.startswith("backbone.fpn."):
        return not cfg.MODEL.FPN.FREEZE
    if name.startswith("language_backbone."):
        return not cfg.MODEL.LANGUAGE_BACKBONE.FREEZE
    if "tunable_linear" in name:
        return cfg.MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER
    assert name.startswith("rpn."), name
    if cfg.MODEL.RPN.FREEZE or "cls_logits" in name:
        return False
    return not cfg.MODEL.LINEAR_PROB or any(key in name for key in LINEAR_PROB_KEYS)


@pytest.fixture(scope="module")
def synthetic_cfg():
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(SYNTHETIC))
    cfg.MODEL.LANGUAGE_BACKBONE.MODEL_PATH = str(ROOT / "configs" / "synthetic" / "bert_tiny")
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize("preset", sorted(TUNING_PRESETS))
def test_each_preset_trains_exactly_the_official_parameters(synthetic_cfg, preset):
    cfg = synthetic_cfg.clone()
    cfg.SOLVER.TUNING_HIGHLEVEL_OVERRIDE = preset
    apply_tuning_preset(cfg)
    model = build_detection_model(cfg)
    model.train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if officially_trainable(name, cfg)}
    assert trainable
    # What each preset is for, in the parameters it leaves trainable.
    if preset in ("language_prompt_v2", "language_prompt_v4"):
        assert trainable == {"rpn.tunable_linear.weight"}
    elif preset in ("language_prompt_v1", "language_prompt_v3"):
        assert all(name.startswith("language_backbone.") for name in trainable)
    elif preset == "linear_prob":
        assert all(name.startswith("rpn.head.") for name in trainable)
        assert cfg.MODEL.DYHEAD.USE_CHECKPOINT is False


def test_an_unknown_preset_is_refused_naming_the_presets(synthetic_cfg):
    cfg = synthetic_cfg.clone()
    cfg.SOLVER.TUNING_HIGHLEVEL_OVERRIDE = "prompt"
    with pytest.raises(ValueError, match=r"SOLVER\.TUNING_HIGHLEVEL_OVERRIDE 'prompt' is not a preset; use one of "
                                         r"\['full', 'language_prompt_v1'"):
        apply_tuning_preset(cfg)


def write_task(tmp_path, name: str, seed: int) -> str:
    """A task config naming a tiny synthetic dataset (6 training, 2 validation images of 64 px)."""
    root = generate_synthetic_dataset(str(tmp_path / name), seed, num_train=6, num_val=2, size=64, min_side=12,
                                      max_side=32, max_objects=2)
    split = lambda s: {"img_dir": str(root / s), "ann_file": str(root / "annotations" / f"{s}.json")}  # noqa: E731
    task = {"DATASETS": {"REGISTER": {f"{name}_grounding_train": split("train"), f"{name}_val": split("val")},
                         "TRAIN": [f"{name}_grounding_train"], "TEST": [f"{name}_val"]}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task))
    return str(path)


def test_finetune_runs_two_tasks_by_two_shot_settings_and_writes_its_table(tmp_path, monkeypatch):
    tasks = ",".join([write_task(tmp_path, "shapes_a", 1), write_task(tmp_path, "shapes_b", 2)])
    output = tmp_path / "runs"
    monkeypatch.chdir(ROOT)
    tool = load_tool("tools/finetune.py")
    rows = tool.main([
        "--config-file", str(SYNTHETIC), "--ft-tasks", tasks, "--custom_shot_and_epoch_and_general_copy", "1_1_1,2_1_1",
        "--shuffle_seeds", "3", "--push_both_val_and_test", "--evaluate_only_best_on_test",
        "OUTPUT_DIR", str(output), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "64", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64", "AUGMENT.MULT_MIN_SIZE_TRAIN", "(64,)", "SOLVER.IMS_PER_BATCH", "1",
        "TEST.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "TEST.DURING_TRAINING", "True",
        "SOLVER.TEST_WITH_INFERENCE", "True", "TEST.AFTER_TRAINING", "False", "SOLVER.TUNING_HIGHLEVEL_OVERRIDE",
        "language_prompt_v2",
    ])
    folders = ["ft_task_1_1shot_seed_3", "ft_task_1_2shot_seed_3", "ft_task_2_1shot_seed_3", "ft_task_2_2shot_seed_3"]
    assert [os.path.basename(row["output_dir"]) for row in rows] == folders
    with open(output / "finetune_results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["task"], r["shots"], r["seed"]) for r in table] == [
        ("shapes_a", "1", "3"), ("shapes_a", "2", "3"), ("shapes_b", "1", "3"), ("shapes_b", "2", "3")]
    for row, folder in zip(table, folders):
        best = read_checkpoint(str(output / folder / "model_best.pth"))
        assert float(row["val AP (best)"]) == best["best_eval"]["ap"]
        assert int(row["best iteration"]) == best["best_eval"]["iteration"] >= 1
        test_column = "AP shapes_a_val" if row["task"] == "shapes_a" else "AP shapes_b_val"
        assert 0.0 <= float(row[test_column]) <= 1.0
        saved = yaml.safe_load((output / folder / "config.yml").read_text())
        assert saved["DATASETS"]["SHUFFLE_SEED"] == 3 and saved["MODEL"]["DYHEAD"]["FUSE_CONFIG"]["ADD_LINEAR_LAYER"]
    assert (output / "finetune_results.md").read_text().splitlines()[0].startswith("| task | output_dir | shots |")


def test_finetune_refuses_bad_settings_naming_the_flag(capsys):
    tool = load_tool("tools/finetune.py")
    with pytest.raises(ValueError, match=r"--custom_shot_and_epoch_and_general_copy '1_200': expected SHOT_EPOCH_COPY"):
        tool.shot_settings("1_1_1,1_200")
    with pytest.raises(ValueError, match=r"--shuffle_seeds '3,x': expected comma-separated whole numbers"):
        tool.seeds_of("3,x")
    with pytest.raises(FileNotFoundError, match=r"--ft-tasks: no config file matches 'no/such/\*\.yaml'"):
        tool.task_configs("no/such/*.yaml", "base.yaml")
    with pytest.raises(SystemExit):
        tool.parse_args(["--config-file", "base.yaml", "--keep_testing"])
    assert "--keep_testing opened the official interactive debugger" in capsys.readouterr().err
    assert tool.shot_settings("1_200_8,10000_1_1") == [(1, 200, 8, 1), (10000, 1, 1, 10000)]
    assert tool.seeds_of(None) == [None]
    with pytest.raises(ValueError, match=r"'1_200_8_3': a fourth number \(the validation shots\) names a prepared "
                                         r"validation split; add --use_prepared_data"):
        tool.shot_settings("1_200_8_3")
    assert tool.shot_settings("1_200_8_3", use_prepared_data=True) == [(1, 200, 8, 3)]


def write_prepared_split(root, split: str, shots: int, seed: int, image_ids: list[int]) -> dict:
    """A prepared k-shot annotation file (the images given, their boxes), registered like the ODinW configs."""
    import json

    data = json.loads((root / "annotations" / f"{split}.json").read_text())
    data["images"] = [image for image in data["images"] if image["id"] in image_ids]
    data["annotations"] = [ann for ann in data["annotations"] if ann["image_id"] in image_ids]
    path = root / "annotations" / f"fewshot_{split}_shot{shots}_seed{seed}.json"
    path.write_text(json.dumps(data))
    return {"img_dir": str(root / split), "ann_file": str(path)}


def test_use_prepared_data_trains_and_validates_on_the_registered_splits(tmp_path):
    from maskrcnn_benchmark.data.build import build_dataset
    from maskrcnn_benchmark.text import build_tokenizer

    task_file = write_task(tmp_path, "shapes", 1)
    task = yaml.safe_load(open(task_file))
    root = tmp_path / "shapes"
    task["DATASETS"]["REGISTER"].update({
        "shapes_grounding_train_2_30": write_prepared_split(root, "train", 2, 30, [1, 3]),
        "shapes_val_1_30": write_prepared_split(root, "val", 1, 30, [2]),
    })
    with open(task_file, "w") as f:
        yaml.safe_dump(task, f)
    tool = load_tool("tools/finetune.py")
    args = tool.parse_args(["--config-file", str(SYNTHETIC), "--use_prepared_data", "MODEL.DEVICE", "cpu",
                            "MODEL.LANGUAGE_BACKBONE.MODEL_PATH", str(ROOT / "configs" / "synthetic" / "bert_tiny")])
    (setting,) = tool.shot_settings("2_4_1_1", use_prepared_data=True)
    cfg = tool.run_config(args, task_file, 1, setting, 30, several_shots=False)
    # As officially: the splits are named <TRAIN>_<shots>_<seed> and <TEST>_<val shots>_<seed>, no shots are drawn,
    # and a 1- or 3-shot validation set is repeated 4 times.
    assert cfg.DATASETS.TRAIN == ("shapes_grounding_train_2_30",) and cfg.DATASETS.TEST == ("shapes_val_1_30",)
    assert (cfg.DATASETS.FEW_SHOT, cfg.DATASETS.GENERAL_COPY_TEST, cfg.SOLVER.MAX_EPOCH) == (0, 4, 4)
    assert os.path.basename(cfg.OUTPUT_DIR) == "ft_task_1_seed_30"
    tokenizer = build_tokenizer(cfg)
    (train_set,) = build_dataset(cfg, cfg.DATASETS.TRAIN, None, tokenizer, is_train=True)
    (val_set,) = build_dataset(cfg, cfg.DATASETS.TEST, None, tokenizer, is_train=False)
    assert sorted(train_set.ids) == [1, 3] and len(val_set) == 4
    # A seed without a prepared split is refused before anything runs.
    with pytest.raises(ValueError, match=r"--use_prepared_data: no dataset 'shapes_grounding_train_2_3' or "
                                         r"'shapes_val_1_3' is registered"):
        tool.run_config(args, task_file, 1, setting, 3, several_shots=False)


# The official ODinW fine-tuning command's overrides (GLIP README), with a preset as finetune.py applies it.
ODINW_RECIPE = ["SOLVER.USE_AMP", "True", "TEST.DURING_TRAINING", "True", "TEST.IMS_PER_BATCH", "4",
                "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WEIGHT_DECAY", "0.05", "TEST.EVAL_TASK", "detection",
                "DATASETS.TRAIN_DATASETNAME_SUFFIX", "_grounding", "MODEL.BACKBONE.FREEZE_CONV_BODY_AT", "2",
                "MODEL.DYHEAD.USE_CHECKPOINT", "True", "SOLVER.FIND_UNUSED_PARAMETERS", "False",
                "SOLVER.TEST_WITH_INFERENCE", "True", "SOLVER.USE_AUTOSTEP", "True", "DATASETS.USE_OVERRIDE_CATEGORY",
                "True", "SOLVER.SEED", "10", "DATASETS.SHUFFLE_SEED", "3", "DATASETS.USE_CAPTION_PROMPT", "True",
                "DATASETS.DISABLE_SHUFFLE", "True", "SOLVER.STEP_PATIENCE", "3", "SOLVER.CHECKPOINT_PER_EPOCH", "1.0",
                "SOLVER.AUTO_TERMINATE_PATIENCE", "8", "SOLVER.MODEL_EMA", "0.0",
                "SOLVER.TUNING_HIGHLEVEL_OVERRIDE", "language_prompt_v2"]


# The official configs/odinw_35 holds 36 task files (ODinW-35 counts some datasets' variants as one).
@pytest.mark.parametrize("suite, count", [("odinw_13", 13), ("odinw_35", 36)])
def test_every_odinw_task_config_takes_the_official_recipe(suite, count):
    from maskrcnn_benchmark.config.compat import check_supported

    tasks = sorted((ROOT / "configs" / suite).glob("*.yaml"))
    assert len(tasks) == count
    for task in tasks:
        cfg = get_cfg_defaults()
        cfg.merge_from_file(str(ROOT / "configs" / "pretrain" / "glip_Swin_T_O365_GoldG.yaml"))
        cfg.merge_from_file(str(task))
        cfg.merge_from_list(ODINW_RECIPE)
        apply_tuning_preset(cfg)
        check_supported(cfg)
        assert cfg.DATASETS.TRAIN and cfg.DATASETS.TEST and cfg.DATASETS.REGISTER, task.name


def test_the_readme_finetune_command_gives_valid_run_configs(tmp_path, monkeypatch):
    import re
    import shlex

    from maskrcnn_benchmark.config.compat import check_supported

    section = (ROOT / "README.md").read_text().split("\n## Fine-tune on your own data\n")[1].split("\n## ")[0]
    (tmp_path / "my_task.yaml").write_text(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    command = shlex.split(re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " "))
    assert command[:2] == ["python", "tools/finetune.py"]
    argv = [str(ROOT / arg) if arg.startswith("configs/") else arg for arg in command[2:]]
    monkeypatch.chdir(tmp_path)
    tool = load_tool("tools/finetune.py")
    args = tool.parse_args(argv)
    runs = [tool.run_config(args, task, 1, shots, seed, True)
            for task in tool.task_configs(args.ft_tasks, args.config_file)
            for shots in tool.shot_settings(args.custom_shot_and_epoch_and_general_copy)
            for seed in tool.seeds_of(args.shuffle_seeds)]
    for cfg in runs:
        check_supported(cfg)
    assert [(os.path.basename(c.OUTPUT_DIR), c.DATASETS.FEW_SHOT, c.SOLVER.MAX_EPOCH) for c in runs] == [
        ("ft_task_1_1shot_seed_3", 1, 200), ("ft_task_1_1shot_seed_30", 1, 200),
        ("ft_task_1_5shot_seed_3", 5, 200), ("ft_task_1_5shot_seed_30", 5, 200)]
