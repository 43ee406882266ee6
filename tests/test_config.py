"""The yacs config against the official defaults, the official config files and the official config dumps."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from yacs.config import CfgNode

from maskrcnn_benchmark.config import (
    PORT_KEYS,
    cfg,
    check_supported,
    compat,
    get_cfg_defaults,
    key_status,
    unsupported_settings,
)
from maskrcnn_benchmark.config.config_node import ConfigFileError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CONFIGS = ROOT / "configs"
GLIP_T = CONFIGS / "pretrain" / "glip_Swin_T_O365_GoldG.yaml"
OFFICIAL_FILES = sorted(CONFIGS.rglob("*.yaml"))
DUMPS = [FIXTURES / "config_defaults.yaml", FIXTURES / "config_glip_t_merged.yaml", FIXTURES / "small" / "config.yaml"]
TASK_CONFIGS = [p for p in OFFICIAL_FILES if p.parent.name != "pretrain"] + [CONFIGS / "pretrain" / "_coco.yaml"]

# Overrides from the official README commands (evaluation and fine-tuning of GLIP-T), as the shell passes them.
README_EVAL_LVIS = [
    "TEST.EVAL_TASK", "detection", "TEST.CHUNKED_EVALUATION", "40", "TEST.IMS_PER_BATCH", "4",
    "SOLVER.IMS_PER_BATCH", "4", "TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM", "3000",
    "MODEL.RETINANET.DETECTIONS_PER_IMG", "300", "MODEL.FCOS.DETECTIONS_PER_IMG", "300",
    "MODEL.ATSS.DETECTIONS_PER_IMG", "300", "MODEL.ROI_HEADS.DETECTIONS_PER_IMG", "300",
    "MODEL.DYHEAD.SCORE_AGG", "MEAN", "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS", "False",
]
README_FINETUNE_ODINW = [
    "SOLVER.USE_AMP", "True", "TEST.DURING_TRAINING", "True", "SOLVER.WEIGHT_DECAY", "0.05",
    "DATASETS.TRAIN_DATASETNAME_SUFFIX", "_grounding", "MODEL.BACKBONE.FREEZE_CONV_BODY_AT", "2",
    "MODEL.DYHEAD.USE_CHECKPOINT", "True", "SOLVER.FIND_UNUSED_PARAMETERS", "False",
    "SOLVER.TEST_WITH_INFERENCE", "True", "SOLVER.USE_AUTOSTEP", "True", "DATASETS.USE_OVERRIDE_CATEGORY", "True",
    "SOLVER.SEED", "10", "DATASETS.SHUFFLE_SEED", "3", "DATASETS.USE_CAPTION_PROMPT", "True",
    "SOLVER.STEP_PATIENCE", "3", "SOLVER.CHECKPOINT_PER_EPOCH", "1.0", "SOLVER.AUTO_TERMINATE_PATIENCE", "8",
    "SOLVER.MODEL_EMA", "0.0", "SOLVER.TUNING_HIGHLEVEL_OVERRIDE", "full",
]
README_TRAIN_COCO = [
    "DATASETS.TRAIN", '("coco_grounding_train", )', "SOLVER.STEPS", "(0.67,0.89)", "SOLVER.BASE_LR", "0.00001",
    "SOLVER.MAX_EPOCH", "24", "DATASETS.DISABLE_SHUFFLE", "True",
]


def _load(path: Path) -> CfgNode:
    with open(path) as f:
        return CfgNode.load_cfg(f)


def _flatten(node: CfgNode, prefix: str = "") -> dict:
    """Leaves by full key; an empty open (new_allowed) section counts as a leaf."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, CfgNode) and len(value) > 0:
            flat.update(_flatten(value, prefix + key + "."))
        else:
            flat[prefix + key] = value
    return flat


def _as_dumped(value):
    """The value as a YAML dump holds it: tuples become lists, an empty section an empty mapping."""
    if isinstance(value, (tuple, list)):
        return [_as_dumped(v) for v in value]
    if isinstance(value, CfgNode):
        return {}
    return value


def _typed(value):
    """The value with the type of every scalar, so that 1 != 1.0 != True and "" != None."""
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    return type(value).__name__, value


def _assert_same_leaves(actual: CfgNode, expected: CfgNode, skip=()) -> None:
    got = {k: v for k, v in _flatten(actual).items() if k not in skip}
    want = _flatten(expected)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert _typed(_as_dumped(got[key])) == _typed(_as_dumped(value)), key


def _merged(*paths: Path, opts=()) -> CfgNode:
    merged = get_cfg_defaults()
    for path in paths:
        merged.merge_from_file(str(path))
    merged.merge_from_list(list(opts))
    return merged


def test_official_config_files_are_present():
    names = {p.relative_to(CONFIGS).as_posix() for p in OFFICIAL_FILES}
    assert {"pretrain/glip_Swin_T_O365_GoldG.yaml", "pretrain/glip_A_Swin_T_O365.yaml", "lvis/minival.yaml",
            "flickr/test.yaml", "odinw_13/pothole.yaml"} <= names


@pytest.mark.parametrize("path", OFFICIAL_FILES + DUMPS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_official_files_and_dumps_merge_unchanged(path):
    merged = _merged(path)
    for key, value in _flatten(_load(path)).items():
        expected = merged._decode_cfg_value(value)  # yacs turns strings like '("val",)' into Python values
        assert _typed(_as_dumped(_flatten(merged)[key])) == _typed(_as_dumped(expected)), key


def test_defaults_equal_the_official_defaults_dump():
    defaults = get_cfg_defaults()
    _assert_same_leaves(defaults, _load(FIXTURES / "config_defaults.yaml"), skip=PORT_KEYS + ("PATHS_CATALOG",))
    # The official default points at the package's own catalog; the fixture dump leaves this path out.
    assert Path(defaults.PATHS_CATALOG) == ROOT / "maskrcnn_benchmark" / "config" / "paths_catalog.py"


def test_defaults_keep_official_python_types():
    # A dump cannot tell tuples from lists; the official source can. These decide what merging accepts.
    assert cfg.MODEL.RPN.ANCHOR_SIZES == (32, 64, 128, 256, 512)
    assert isinstance(cfg.INPUT.PIXEL_MEAN, list) and isinstance(cfg.MODEL.FCOS.FPN_STRIDES, list)
    assert isinstance(cfg.DATASETS.TRAIN, tuple) and isinstance(cfg.DATASETS.BING_INDEX_LIST, list)
    assert cfg.TEST.RANGES[0] == (96, 10000) and cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_LAYERS == (512,) * 8
    assert cfg.DATASETS.PREDEFINED_TEXT is None and cfg.SOLVER.TUNING_HIGHLEVEL_OVERRIDE is None
    assert type(cfg.SOLVER.BIAS_LR_FACTOR) is int and type(cfg.MODEL.SWINT.MLP_RATIO) is int
    assert cfg.SOLVER.WARMUP_FACTOR == 1.0 / 3
    assert cfg.DATASETS.REGISTER.is_new_allowed() and cfg.MODEL.SPEC.is_new_allowed()
    assert not cfg.MODEL.DYHEAD.is_new_allowed()


def test_glip_t_merge_equals_the_official_merged_dump():
    _assert_same_leaves(_merged(GLIP_T), _load(FIXTURES / "config_glip_t_merged.yaml"),
                        skip=PORT_KEYS + ("PATHS_CATALOG",))


@pytest.mark.parametrize("paths", [[], [GLIP_T], [GLIP_T, CONFIGS / "odinw_13" / "pothole.yaml"]],
                         ids=["defaults", "glip_t", "glip_t+odinw"])
def test_dump_round_trips(paths):
    original = _merged(*paths)
    restored = get_cfg_defaults()
    restored.merge_from_other_cfg(CfgNode.load_cfg(original.dump()))
    before, after = _flatten(original), _flatten(restored)
    assert sorted(before) == sorted(after)
    for key, value in before.items():
        # Nested tuples (TEST.RANGES) come back as tuples of lists: yacs only converts the outer level.
        assert type(after[key]) is type(value), key
        assert _typed(_as_dumped(after[key])) == _typed(_as_dumped(value)), key


def test_misspelt_key_in_a_file_names_the_full_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  DYHEAD:\n    NUM_CONVZ: 6\n")
    with pytest.raises(KeyError, match=r"MODEL\.DYHEAD\.NUM_CONVZ"):
        get_cfg_defaults().merge_from_file(str(path))


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "indented.yaml"
    path.write_text("MODEL:\n  DEVICE: cpu\n   WEIGHT: x\n")  # WEIGHT indented one space too far
    with pytest.raises(ConfigFileError) as raised:
        get_cfg_defaults().merge_from_file(str(path))
    message = str(raised.value)
    assert message.startswith(f"Config file {path}, line 3, column 10 is not valid YAML")
    assert f'mapping values are not allowed here\n  in "{path}", line 3, column 10:' in message
    assert "<unicode string>" not in message


@pytest.mark.slow
def test_train_net_names_a_config_file_that_is_not_yaml(tmp_path):
    path = tmp_path / "unclosed.yaml"
    path.write_text("SOLVER:\n  STEPS: (0.67, 0.89\nMODEL:\n  DEVICE: [cpu\n")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"ConfigFileError: Config file {path}, line 5, column 1 is not valid YAML" in result.stderr, result.stderr


def test_missing_config_file_and_misspelt_key_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Config file not found: {re.escape(str(tmp_path))}/none.yaml"):
        get_cfg_defaults().merge_from_file(str(tmp_path / "none.yaml"))
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  DYHEAD:\n    NUM_CONVZ: 6\n")
    with pytest.raises(KeyError, match=f"Config file {re.escape(str(path))}: Non-existent config key: "
                                       r"MODEL\.DYHEAD\.NUM_CONVZ"):
        get_cfg_defaults().merge_from_file(str(path))


@pytest.mark.parametrize("key", ["MODEL.DYHEAD.NUM_CONVZ", "MODEL.DYHAED.NUM_CONVS"])
def test_misspelt_key_in_a_list_names_the_full_key(key):
    with pytest.raises((KeyError, AssertionError), match=key.replace(".", r"\.")):
        get_cfg_defaults().merge_from_list([key, "6"])


def test_merge_from_list_decodes_command_line_values():
    merged = _merged(GLIP_T, opts=README_TRAIN_COCO + README_FINETUNE_ODINW)
    assert merged.DATASETS.TRAIN == ("coco_grounding_train",)
    assert merged.SOLVER.STEPS == (0.67, 0.89)
    assert merged.SOLVER.BASE_LR == 1e-5 and merged.SOLVER.MAX_EPOCH == 24
    assert merged.SOLVER.USE_AUTOSTEP is True and merged.SOLVER.TUNING_HIGHLEVEL_OVERRIDE == "full"
    assert merged.MODEL.BACKBONE.FREEZE_CONV_BODY_AT == 2


def test_merge_from_list_rejects_a_wrong_type_naming_the_key():
    with pytest.raises(ValueError, match=r"SOLVER\.MAX_EPOCH"):
        get_cfg_defaults().merge_from_list(["SOLVER.MAX_EPOCH", "1.5"])


@pytest.mark.parametrize("task", TASK_CONFIGS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_check_supported_accepts_glip_t_with_each_task_config(task):
    check_supported(_merged(GLIP_T, task))


@pytest.mark.parametrize("opts", [README_EVAL_LVIS, README_TRAIN_COCO], ids=["eval_lvis", "train_coco"])
def test_check_supported_accepts_the_official_glip_t_commands(opts):
    check_supported(_merged(GLIP_T, CONFIGS / "lvis" / "minival.yaml", opts=opts))


def test_check_supported_accepts_the_odinw_recipe():
    # The ODinW fine-tuning command's auto-step schedule and early stopping are built (solver/lr_scheduler.py,
    # engine/hooks.py): the whole command passes the check, and the solver builders take it.
    from maskrcnn_benchmark.solver.build import make_lr_scheduler, make_optimizer

    odinw = _merged(GLIP_T, CONFIGS / "lvis" / "minival.yaml", opts=README_FINETUNE_ODINW)
    assert unsupported_settings(odinw) == []
    check_supported(odinw)
    optimizer = make_optimizer(odinw, torch.nn.Linear(2, 2))
    assert type(make_lr_scheduler(odinw, optimizer)).__name__ == "WarmupReduceLROnPlateau"


@pytest.mark.parametrize("dump", DUMPS[1:], ids=["glip_t_merged", "small"])
def test_check_supported_accepts_the_glip_t_dumps(dump):
    check_supported(_merged(dump))
    assert unsupported_settings(_merged(dump)) == []


@pytest.mark.parametrize("key, value, feature", [
    ("MODEL.MASK_ON", "True", "mask head"),
    ("MODEL.KEYPOINT_ON", "True", "keypoint head"),
    ("MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS", "True", "MLM loss"),
    ("MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS", "True", "shallow contrastive"),
    ("GLIPKNOW.KNOWLEDGE_FILE", "knowledge.yaml", "GLIPKNOW"),
    ("MODEL.FCOS.NMS_TH", "0.5", "FCOS head"),
    ("MODEL.SWINT.OUT_NORM", "False", "Swin Transformer v2"),
    ("MODEL.FPN.USE_PAN", "True", "FPN variants"),
    ("TEST.USE_MULTISCALE", "True", "test-time augmentation"),
    ("DATALOADER.DISTRIBUTE_CHUNK_AMONG_NODE", "True", "chunk-by-node sampler"),
])
def test_check_supported_rejects_an_unbuilt_feature(key, value, feature):
    glip_t = _merged(GLIP_T)
    glip_t.merge_from_list([key, value])
    with pytest.raises(ValueError) as error:
        check_supported(glip_t)
    message = str(error.value)
    assert key in message and feature in message
    assert repr(glip_t._decode_cfg_value(value)) in message


def test_check_supported_rejects_settings_in_an_open_section():
    glip_t = _merged(GLIP_T)
    glip_t.MODEL.SPEC.DIM_EMBED = [64, 192, 384]
    with pytest.raises(ValueError, match=r"MODEL\.SPEC = .*CvT backbone"):
        check_supported(glip_t)


@pytest.mark.parametrize("key, value, supported", [
    ("MODEL.BACKBONE.CONV_BODY", "R-50-FPN-RETINANET", "'SWINT-FPN-RETINANET'"),
    ("MODEL.RPN_ARCHITECTURE", "ATSS", "'VLDYHEAD'"),
    ("MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "'GeneralizedVLRCNN'"),
    ("MODEL.LANGUAGE_BACKBONE.MODEL_TYPE", "clip", "'bert-base-uncased'"),
    ("MODEL.SWINT.VERSION", "v2", "'v1'"),
    ("MODEL.DYHEAD.FUSE_CONFIG.TYPE", "SCAN", "'MHA-B'"),
    ("MODEL.RPN_ONLY", "False", "True"),
])
def test_check_supported_rejects_an_unsupported_choice_listing_the_supported_values(key, value, supported):
    glip_t = _merged(GLIP_T)
    glip_t.merge_from_list([key, value])
    with pytest.raises(ValueError) as error:
        check_supported(glip_t)
    message = str(error.value)
    assert f"{key} = {glip_t._decode_cfg_value(value)!r}" in message
    assert f"supported: {supported}" in message


def test_check_supported_reports_every_problem_at_once():
    # The defaults (R-50-C4 Faster R-CNN) are not built. (GLIP-A and GLIP-L: tests/test_model_variants.py.)
    assert unsupported_settings(_merged(CONFIGS / "pretrain" / "glip_A_Swin_T_O365.yaml")) == []
    with pytest.raises(ValueError, match=r"(?s)META_ARCHITECTURE.*CONV_BODY.*USE_DOT_PRODUCT_TOKEN_LOSS"):
        check_supported(get_cfg_defaults())


def test_placeholder_keys_of_unbuilt_heads_are_accepted():
    glip_t = _merged(GLIP_T, opts=["MODEL.FCOS.NUM_CLASSES", "8", "MODEL.ROI_BOX_HEAD.NUM_CLASSES", "8",
                                   "DATASETS.PREDEFINED_TEXT", "odinw/pothole/category_description.json"])
    check_supported(glip_t)


def test_port_keys_exist_with_their_defaults():
    assert PORT_KEYS == ("MODEL.LANGUAGE_BACKBONE.MODEL_PATH", "MODEL.LANGUAGE_BACKBONE.TOKENIZER_PATH",
                         "MODEL.DYHEAD.FUSE_CONFIG.ATTN_DROPOUT", "MODEL.DYHEAD.FUSE_CONFIG.ATTN_EMBED_DIM",
                         "MODEL.DYHEAD.FUSE_CONFIG.ATTN_NUM_HEADS", "MODEL.EXECUTION_PLAN", "SOLVER.AMP_DTYPE",
                         "SOLVER.LOG_PERIOD",
                         "SOLVER.KEEP_LAST_CHECKPOINTS", "SOLVER.SKIP_NONFINITE_STEPS", "SOLVER.DDP_TIMEOUT_MINUTES",
                         "TEST.AFTER_TRAINING", "TEST.EVAL_PERIOD", "MODEL.ALLOW_MISSING_WEIGHTS")
    assert cfg.MODEL.ALLOW_MISSING_WEIGHTS is False
    assert (cfg.SOLVER.LOG_PERIOD, cfg.SOLVER.KEEP_LAST_CHECKPOINTS, cfg.SOLVER.SKIP_NONFINITE_STEPS) == (20, 0, False)
    assert type(cfg.SOLVER.DDP_TIMEOUT_MINUTES) is float and cfg.SOLVER.DDP_TIMEOUT_MINUTES == 30.0
    assert (cfg.TEST.AFTER_TRAINING, cfg.TEST.EVAL_PERIOD) == (False, 0)
    lang, fuse = cfg.MODEL.LANGUAGE_BACKBONE, cfg.MODEL.DYHEAD.FUSE_CONFIG
    assert lang.MODEL_PATH == "" and lang.TOKENIZER_PATH == ""
    assert lang.MODEL_TYPE == "bert-base-uncased" and lang.TOKENIZER_TYPE == "bert-base-uncased"
    assert type(fuse.ATTN_DROPOUT) is float and fuse.ATTN_DROPOUT == 0.1
    assert type(fuse.ATTN_EMBED_DIM) is int and fuse.ATTN_EMBED_DIM == 2048
    assert type(fuse.ATTN_NUM_HEADS) is int and fuse.ATTN_NUM_HEADS == 8
    official = _flatten(_load(FIXTURES / "config_defaults.yaml"))
    assert not set(PORT_KEYS) & set(official)
    merged = _merged(GLIP_T, opts=["MODEL.LANGUAGE_BACKBONE.MODEL_PATH", "/models/bert",
                                   "MODEL.DYHEAD.FUSE_CONFIG.ATTN_DROPOUT", "0.0"])
    assert merged.MODEL.LANGUAGE_BACKBONE.MODEL_PATH == "/models/bert"
    assert merged.MODEL.DYHEAD.FUSE_CONFIG.ATTN_DROPOUT == 0.0
    check_supported(merged)


def test_get_cfg_defaults_returns_a_fresh_mutable_copy():
    fresh = get_cfg_defaults()
    assert isinstance(cfg, CfgNode) and isinstance(fresh, CfgNode) and fresh is not cfg and fresh == cfg
    assert not fresh.is_frozen()
    fresh.MODEL.DYHEAD.NUM_CONVS = 6
    fresh.DATASETS.REGISTER.my_set = CfgNode({"img_dir": "a", "ann_file": "b.json"})
    assert cfg.MODEL.DYHEAD.NUM_CONVS == 4 and len(cfg.DATASETS.REGISTER) == 0
    assert get_cfg_defaults().MODEL.DYHEAD.NUM_CONVS == 4


# ---- the one table of what is built (config/compat.py): every defaults key has a status ------------------------

PACKAGE = ROOT / "maskrcnn_benchmark"
CONFIG_TABLES = (PACKAGE / "config" / "defaults.py", PACKAGE / "config" / "compat.py")


def _leaf_keys(node: CfgNode, prefix: str = "") -> list:
    """Full keys of the leaves of `node`; an open (new_allowed) section is one leaf."""
    keys = []
    for key, value in node.items():
        if isinstance(value, CfgNode) and not value.is_new_allowed():
            keys += _leaf_keys(value, prefix + key + ".")
        else:
            keys.append(prefix + key)
    return keys


def _code_reading(name: str) -> list:
    """Source files outside the config tables that access a key called `name` (`.NAME` or `"NAME"`)."""
    pattern = re.compile(r"\." + name + r"\b|[\"']" + name + r"[\"']")
    files = [p for p in sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "tools").glob("*.py"))
             if p not in CONFIG_TABLES]
    return [p for p in files if pattern.search(p.read_text())]


def _table_keys(table: dict) -> list:
    return [".".join(filter(None, [section, key])) for section, keys in table.items() for key in keys]


def test_every_default_key_is_read_accepted_without_effect_or_refused():
    statuses = {key: key_status(key) for key in _leaf_keys(get_cfg_defaults())}
    assert [key for key, status in statuses.items() if status == "unknown"] == []
    assert statuses["MODEL.DYHEAD.NUM_CONVS"] == "read"
    assert statuses["SOLVER.MIN_LR"] == statuses["SOLVER.USE_AUTOSTEP"] == "read"
    assert statuses["SOLVER.AUTO_TERMINATE_PATIENCE"] == statuses["DATASETS.SHUFFLE_SEED"] == "read"
    assert statuses["SOLVER.USE_COSINE"].startswith("refused: ")
    assert statuses["MODEL.MASK_ON"] == "refused: the mask head"
    assert statuses["MODEL.RPN.ASPECT_RATIOS"].startswith("refused unless one aspect ratio")


def test_the_key_walk_fails_on_a_key_in_no_table():
    extended = get_cfg_defaults()
    extended.SOLVER.SOME_NEW_OPTION = 3
    extended.MODEL.DYHEAD.FUSE_CONFIG.ANOTHER = False
    unknown = [key for key in _leaf_keys(extended) if key_status(key) == "unknown"]
    assert unknown == ["MODEL.DYHEAD.FUSE_CONFIG.ANOTHER", "SOLVER.SOME_NEW_OPTION"]


def test_the_tables_name_only_default_keys():
    defaults = set(_leaf_keys(get_cfg_defaults()))
    listed = (_table_keys(compat.READ_KEYS) + list(compat.NO_EFFECT_KEYS) + list(compat.SUPPORTED_CHOICES)
              + list(compat.BUILT_RULES))
    assert [key for key in listed if key not in defaults] == []
    assert len(_table_keys(compat.READ_KEYS)) == len(set(_table_keys(compat.READ_KEYS)))


def test_read_keys_are_read_and_no_effect_keys_are_not():
    read = [key for key in _leaf_keys(get_cfg_defaults()) if key_status(key) == "read"]
    assert [key for key in read if not _code_reading(key.rsplit(".", 1)[-1])] == []
    # A key listed as without effect that some code starts to read belongs in READ_KEYS instead.
    read_anyway = {key: _code_reading(key.rsplit(".", 1)[-1]) for key in compat.NO_EFFECT_KEYS}
    assert {key: files for key, files in read_anyway.items() if files} == {}


_RULE_BREAKERS = {
    "MODEL.RPN.ASPECT_RATIOS": (0.5, 1.0, 2.0), "MODEL.RPN.SCALES_PER_OCTAVE": 3,
    "MODEL.BACKBONE.OUT_CHANNELS": 128, "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE": 128,
    "MODEL.BACKBONE.OUT_FEATURES": ("stage2", "stage3", "stage4"), "MODEL.SWINT.OUT_CHANNELS": (96, 192, 384, 512),
    "SOLVER.TEST_WITH_INFERENCE": False, "MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT": False,
}


def _other_value(value):
    """A value of the same type as `value` that differs from it."""
    if isinstance(value, CfgNode):
        return CfgNode({"SOME_SETTING": 1})
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 3
    if isinstance(value, str):
        return value + "-unbuilt"
    if isinstance(value, (tuple, list)):
        return list(value) + ([value[-1]] if value else ["x"])
    assert value is None
    return "x"


def _unbuilt_value(key: str):
    """A value of `key` that selects something this port does not build."""
    if key in _RULE_BREAKERS:
        return _RULE_BREAKERS[key]
    if key in compat.SUPPORTED_CHOICES:
        supported = compat.SUPPORTED_CHOICES[key][0]
        value = _other_value(supported[0])
        assert value not in supported
        return value
    return _other_value(_default(key))


def _default(key: str):
    node = get_cfg_defaults()
    for name in key.split("."):
        node = node[name]
    return node


def _set(cfg: CfgNode, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = value


@pytest.fixture(scope="module")
def glip_t_cfg():
    return _merged(GLIP_T)


def test_each_refused_key_set_to_an_unbuilt_value_is_named(glip_t_cfg):
    refused = [key for key in _leaf_keys(get_cfg_defaults()) if key_status(key).startswith("refused")]
    assert len(refused) > 230
    wrong = {}
    for key in refused:
        config = glip_t_cfg.clone()
        value = _unbuilt_value(key)
        _set(config, key, value)
        if key == "SOLVER.TEST_WITH_INFERENCE":
            config.TEST.DURING_TRAINING = True
        problems = unsupported_settings(config)
        named = len(problems) == 1 and problems[0].startswith(f"{key} = {value!r} ")
        what_is_built = "supported: " in problems[0] or "leave it at its default " in problems[0] if named else False
        if not (named and what_is_built):
            wrong[key] = problems
    assert wrong == {}


@pytest.mark.parametrize("key, value, message", [
    ("SOLVER.TEST_WITH_INFERENCE", "False", r"SOLVER\.TEST_WITH_INFERENCE = False is not built by this port; "
                                            r"supported: True when TEST\.DURING_TRAINING is True"),
    ("MODEL.RPN.ASPECT_RATIOS", "(0.5, 1.0, 2.0)", r"MODEL\.RPN\.ASPECT_RATIOS = \(0\.5, 1\.0, 2\.0\) is not built "
                                                   r"by this port; supported: one aspect ratio"),
    ("DATASETS.CLASS_CONCAT", "True", r"DATASETS\.CLASS_CONCAT = True selects class-id offsets between "
                                      r"concatenated datasets, which this port does not build; supported: False"),
])
def test_refusal_messages_name_the_key_the_value_and_what_is_built(glip_t_cfg, key, value, message):
    config = glip_t_cfg.clone()
    config.merge_from_list(["TEST.DURING_TRAINING", "True", key, value])
    with pytest.raises(ValueError, match=message):
        check_supported(config)


def test_no_effect_keys_merge_and_pass_the_check(glip_t_cfg):
    config = glip_t_cfg.clone()
    config.merge_from_list(["MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE", "False", "SOLVER.MIN_LR", "0.001",
                            "DATASETS.MAX_BOX", "10", "DATASETS.USE_CROWD", "True", "AUGMENT.BRIGHTNESS", "0.2",
                            "SOLVER.TUNING_HIGHLEVEL_OVERRIDE", "linear_prob"])
    check_supported(config)
    assert key_status("MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE").startswith(
        "no effect: officially read only by the MHA-S fusion")


def test_the_data_evaluation_and_solver_builders_refuse_from_the_one_table(glip_t_cfg):
    from maskrcnn_benchmark.data.build import build_dataset
    from maskrcnn_benchmark.engine.inference import inference
    from maskrcnn_benchmark.solver.build import make_lr_scheduler, make_optimizer

    config = glip_t_cfg.clone()
    config.merge_from_list(["DATASETS.CLASS_CONCAT", "True", "TEST.EVAL_TASK", "vqa",
                            "SOLVER.USE_COSINE", "True", "MODEL.MASK_ON", "True"])
    # Each builder checks its own sections only: the data builder names the data key, not the solver key.
    with pytest.raises(ValueError, match=r"DATASETS\.CLASS_CONCAT = True") as error:
        build_dataset(config, ["coco_grounding_train"], None, None, is_train=True)
    assert "SOLVER" not in str(error.value) and "MASK_ON" not in str(error.value)
    with pytest.raises(ValueError, match=r"TEST\.EVAL_TASK = 'vqa' selects another evaluation task"):
        inference(None, None, "val", cfg=config)
    with pytest.raises(ValueError, match=r"SOLVER\.USE_COSINE = True") as error:
        make_optimizer(config, torch.nn.Linear(2, 2))
    assert "DATASETS" not in str(error.value)
    with pytest.raises(ValueError, match=r"SOLVER\.USE_COSINE = True"):
        make_lr_scheduler(config, torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
