"""The one table of what this port builds, and the check that a config asks for nothing else.

Every leaf key of the defaults has exactly one status here (a test walks them all, tests/test_config.py):

* read: listed in :data:`READ_KEYS`; a builder maps it to a constructor argument, or a tool uses it.
* accepted without effect: :data:`NO_EFFECT_KEYS` (with the reason), :data:`PLACEHOLDER_KEYS` and
  :data:`UNREAD_KEYS`; any value merges and changes nothing, as officially or because what reads it is refused.
* refused when set: :data:`UNBUILT_FEATURES` (a value other than the official default), :data:`SUPPORTED_CHOICES`
  (a value other than the built ones) and :data:`BUILT_RULES` (a value the built model cannot take, given the
  rest of the config). A key can be read and refused (MODEL_TYPE: only bert-base-uncased is built).

The official GLIP defaults define keys for many features this port does not build (ROI heads, other backbones
and heads, other language models, extra losses, ...). They are all accepted here, with their official defaults,
so that every official config file and config dump merges unchanged. Only the GLIP path (Swin + FPN, BERT,
VLDyHead with MHA-B fusion, or none for GLIP-A, and the dot-product token loss, ATSS) is built.
:func:`check_supported`, called by build_detection_model (all but SOLVER), the data and evaluation builders and
the solver builders (SOLVER), refuses every setting of the third kind, naming the key, the value and what is
built; the builders themselves only map keys to arguments.
"""
import copy
from collections.abc import Callable, Sequence
from typing import Any

from .config_node import ConfigNode as CN

# Feature description -> {section: {key: official default}}. A non-default value is rejected.
UNBUILT_FEATURES: dict[str, dict[str, dict[str, Any]]] = {
    "the ROI box head (two-stage detection)": {
        "MODEL": {"BOX_ON": True},
        "MODEL.RPN": {"FORCE_BOXES": False, "RETURN_FUSED_FEATURES": False},
        "MODEL.ROI_HEADS": {
            "USE_FPN": False, "FG_IOU_THRESHOLD": 0.5, "BG_IOU_THRESHOLD": 0.5,
            "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0), "BATCH_SIZE_PER_IMAGE": 512, "POSITIVE_FRACTION": 0.25,
            "SCORE_THRESH": 0.05, "NMS": 0.5,
        },
        "MODEL.ROI_BOX_HEAD": {
            "FEATURE_EXTRACTOR": "ResNet50Conv5ROIFeatureExtractor", "PREDICTOR": "FastRCNNPredictor",
            "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0, "POOLER_SCALES": (1.0 / 16,),
            "MLP_HEAD_DIM": 1024, "USE_GN": False, "DILATION": 1, "CONV_HEAD_DIM": 256, "NUM_STACKED_CONVS": 4,
        },
    },
    "the mask head": {
        "MODEL": {"MASK_ON": False},
        "MODEL.ROI_MASK_HEAD": {
            "FEATURE_EXTRACTOR": "ResNet50Conv5ROIFeatureExtractor", "PREDICTOR": "MaskRCNNC4Predictor",
            "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0, "POOLER_SCALES": (1.0 / 16,),
            "MLP_HEAD_DIM": 1024, "CONV_LAYERS": (256, 256, 256, 256), "RESOLUTION": 14,
            "SHARE_BOX_FEATURE_EXTRACTOR": True, "POSTPROCESS_MASKS": False, "POSTPROCESS_MASKS_THRESHOLD": 0.5,
            "DILATION": 1, "USE_GN": False, "HG_SCALE": 1,
        },
    },
    "the keypoint head": {
        "MODEL": {"KEYPOINT_ON": False},
        "MODEL.ROI_KEYPOINT_HEAD": {
            "FEATURE_EXTRACTOR": "KeypointRCNNFeatureExtractor", "PREDICTOR": "KeypointRCNNPredictor",
            "POOLER_RESOLUTION": 14, "POOLER_SAMPLING_RATIO": 0, "POOLER_SCALES": (1.0 / 16,),
            "MLP_HEAD_DIM": 1024, "CONV_LAYERS": (512,) * 8, "RESOLUTION": 14, "NUM_CLASSES": 17,
            "KEYPOINT_NAME": (), "SHARE_BOX_FEATURE_EXTRACTOR": True,
        },
        "DATALOADER": {"MIN_KPS_PER_IMS": 0},
    },
    "the plain RPN head (proposal sampling and NMS)": {
        "MODEL.RPN": {
            "FG_IOU_THRESHOLD": 0.7, "BG_IOU_THRESHOLD": 0.3, "BATCH_SIZE_PER_IMAGE": 256,
            "POSITIVE_FRACTION": 0.5, "PRE_NMS_TOP_N_TRAIN": 12000, "PRE_NMS_TOP_N_TEST": 6000,
            "POST_NMS_TOP_N_TRAIN": 2000, "POST_NMS_TOP_N_TEST": 1000, "NMS_THRESH": 0.7, "MIN_SIZE": 0,
            "FPN_POST_NMS_TOP_N_TRAIN": 2000, "FPN_POST_NMS_TOP_N_TEST": 2000, "RPN_HEAD": "SingleConvRPNHead",
        },
    },
    "the RetinaNet head": {
        "MODEL.RETINANET": {
            "NUM_CLASSES": 81, "NUM_CONVS": 4, "PRE_NMS_TOP_N": 1000, "PRIOR_PROB": 0.01, "INFERENCE_TH": 0.05,
            "NMS_TH": 0.4,
        },
        "MODEL.FOCAL": {"BBOX_REG_WEIGHT": 4.0, "BBOX_REG_BETA": 0.11},
    },
    "the FCOS head": {
        "MODEL.RPN": {"ANCHOR_SHIFT": (0.0, 0.0, 0.0, 0.0), "USE_RELATIVE_SIZE": False},  # its anchor generator
        "MODEL.FCOS": {
            "FPN_STRIDES": [8, 16, 32, 64, 128], "PRIOR_PROB": 0.01, "INFERENCE_TH": 0.05, "NMS_TH": 0.6,
            "PRE_NMS_TOP_N": 1000, "NUM_CONVS": 4, "USE_DFCONV": False, "CENTER_SAMPLING_RADIUS": 0.0,
            "IOU_LOSS_TYPE": "iou", "NORM_REG_TARGETS": False, "CENTERNESS_ON_REG": False, "USE_GT_CENTER": False,
            "USE_GN": False, "USE_BN": False, "INFERENCE_TH_TRAIN": 0.0, "PRE_NMS_TOP_N_TRAIN": 3000,
            "POST_NMS_TOP_N_TRAIN": 1000,
        },
    },
    "the ATSS head without language": {
        "MODEL.ATSS": {
            "PRIOR_PROB": 0.01, "NUM_CONVS": 4, "CHANNELS": 128, "USE_DFCONV": False, "USE_GN": False,
            "USE_BN": False, "USE_DYRELU": False, "USE_SE": False,
        },
    },
    "DyHead variants (custom conv function, BatchNorm, cosine classifier)": {
        "MODEL.DYHEAD": {"CONV_FUNC": "", "USE_NSYNCBN": False, "USE_SYNCBN": False, "COSINE_SCALE": -1.0},
    },
    "ResNet backbones": {
        "MODEL.BACKBONE": {
            "RESET_BN": False, "NORM_LEVEL": 3, "USE_BN": False, "USE_SYNCBN": False, "USE_NSYNCBN": False,
        },
        "MODEL.GROUP_NORM": {"DIM_PER_GP": -1, "EPSILON": 1e-5},  # GroupNorm of the ResNet/FPN conv helpers
        "MODEL.RESNETS": {
            "USE_STEM3X3": False, "WITH_SE": False, "USE_AVG_DOWN": False, "NUM_GROUPS": 1, "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True, "TRANS_FUNC": "BottleneckWithFixedBatchNorm",
            "STEM_FUNC": "StemWithFixedBatchNorm", "RES5_DILATION": 1, "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64, "STAGE_WITH_DCN": (False, False, False, False), "WITH_MODULATED_DCN": False,
            "DEFORMABLE_GROUPS": 1,
        },
    },
    "EfficientNet/EfficientDet backbones and BiFPN": {
        "MODEL.BACKBONE": {"EFFICIENT_DET_START_FROM": 3, "EFFICIENT_DET_COMPOUND": 0},
        "MODEL.BIFPN": {"NUM_REPEATS": 1, "USE_ATTENTION": True},
    },
    "the CvT backbone": {
        "MODEL": {"SPEC": CN(new_allowed=True)},
    },
    "architecture search (evolution)": {
        "MODEL.BACKBONE": {"LAYER_SETUP": (3, 4, 6, 3), "LAYER_SEARCH": CN(new_allowed=True)},
        "SEARCH": {
            "MAX_EPOCH": 20, "SELECT_NUM": 20, "POPULATION_NUM": 64, "MUTATION_NUM": 24, "CROSSOVER_NUM": 24,
            "MUTATION_PROB": 0.1,
        },
    },
    "FPN variants (GN/ReLU convs, SPP, PAN, DyHead neck, pre-fusion Swin features)": {
        "MODEL.FPN": {
            "USE_GN": False, "USE_RELU": False, "USE_SPP": False, "USE_PAN": False, "USE_DYHEAD": False,
            "RETURN_SWINT_FEATURE_BEFORE_FUSION": False,
        },
    },
    "Swin Transformer v2": {
        "MODEL.SWINT": {"OUT_NORM": True, "LAYER_SCALE": 0},
    },
    "the CLIP language backbone": {
        "MODEL.LANGUAGE_BACKBONE": {"WEIGHT": ""},
        "MODEL.CLIP": {
            "CONTEXT_LENGTH": 256, "WIDTH": 512, "LAYERS": 12, "HEADS": 8, "DROP_PATH": 0.0, "VOCAB_SIZE": 49408,
        },
    },
    "the RNN language backbone": {
        "MODEL.LANGUAGE_BACKBONE": {
            "RNN_TYPE": "lstm", "VARIABLE_LENGTH": True, "WORD_EMBEDDING_SIZE": 512, "WORD_VEC_SIZE": 512,
            "HIDDEN_SIZE": 512, "BIDIRECTIONAL": True, "INPUT_DROPOUT_P": 0.5, "DROPOUT_P": 0.2,
            "CORPUS_PATH": "", "VOCAB_SIZE": 0,
        },
    },
    "the token classification loss (USE_TOKEN_LOSS)": {
        "MODEL.DYHEAD.FUSE_CONFIG": {"USE_TOKEN_LOSS": False, "TOKEN_LOSS_WEIGHT": 1.0},
    },
    "the contrastive alignment loss": {
        "MODEL.DYHEAD.FUSE_CONFIG": {
            "USE_CONTRASTIVE_ALIGN_LOSS": False, "CONTRASTIVE_HIDDEN_DIM": 64, "CONTRASTIVE_ALIGN_LOSS_WEIGHT": 1.0,
        },
    },
    "the MHA-S/SCAN/FILM fusion types": {
        "MODEL.DYHEAD.FUSE_CONFIG": {"JOINT_OUT_SIZE": 256, "JOINT_EMB_DROPOUT": 0.1, "JOINT_MLP_LAYERS": 2},
    },
    "fusion variants (separate bidirectional language projection, 2D stable softmax)": {
        "MODEL.DYHEAD.FUSE_CONFIG": {
            "SEPARATE_BIDIRECTIONAL": False, "STABLE_SOFTMAX_2D": False, "DO_LANG_PROJ_OUTSIDE_CHECKPOINT": False,
        },
    },
    "the MLM loss": {
        "MODEL.DYHEAD.FUSE_CONFIG": {
            "MLM_LOSS": False, "MLM_LOSS_FOR_ONLY_POSITIVES": True, "NO_MASK_FOR_OD": False,
            "NO_MASK_FOR_GOLD": False, "MLM_LOSS_COEF": 1.0, "MLM_OBJ_FOR_ONLY_POSITIVE": False,
        },
    },
    "the shallow contrastive losses": {
        "MODEL.DYHEAD": {"SHALLOW_LOG_SCALE": 0.0},
        "MODEL.DYHEAD.FUSE_CONFIG": {
            "USE_SHALLOW_CONTRASTIVE_LOSS": False, "SHALLOW_MAX_POSITIVE_ANCHORS": 100,
            "USE_SHALLOW_ZERO_PADS": False, "SHALLOW_CONTRASTIVE_HIDDEN_DIM": 64,
            "SHALLOW_CONTRASTIVE_LOSS_WEIGHT": 1.0, "USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS": False,
        },
    },
    "GLIPKNOW (knowledge-augmented prompts)": {
        "GLIPKNOW": {
            "KNOWLEDGE_FILE": "", "KNOWLEDGE_TYPE": "", "MAX_NUM_CLASSES_PER_BATCH_TRAIN": -1,
            "PARALLEL_LANGUAGE_INPUT": False, "LAN_FEATURE_AGG_TYPE": "first", "GPT3_NUM": 5, "WIKI_AND_GPT3": False,
        },
    },
    "ONNX export of the R-CNN heads": {
        "MODEL": {"ONNX": False},
    },
    # The caption datasets' own options are accepted without effect (NO_EFFECT_KEYS); this one is refused because
    # officially it replaces the sampler of every training set, caption or not.
    "the chunk-by-node sampler of the caption datasets": {
        "DATALOADER": {"DISTRIBUTE_CHUNK_AMONG_NODE": False},
    },
    "VQA data": {
        "DATASETS": {"DIVER_BOX_FOR_VQA": False},
    },
    "one-hot class prompts": {
        "DATASETS": {"ONE_HOT": False, "NO_MINUS_ONE_FOR_ONE_HOT": False},
    },
    "alternating / multi-stage training": {
        "DATASETS": {"ALTERNATIVE_TRAINING": False, "MULTISTAGE_TRAINING": False},
        "SOLVER": {"MULTI_MAX_ITER": (), "MULTI_MAX_EPOCH": ()},
    },
    "multi-scale / flip test-time augmentation": {
        "TEST": {
            "USE_MULTISCALE": False,
            "SCALES": (400, 500, 600, 640, 700, 900, 1000, 1100, 1200, 1300, 1400, 1800),
            "RANGES": (
                (96, 10000), (96, 10000), (64, 10000), (64, 10000), (64, 10000), (0, 10000), (0, 10000),
                (0, 256), (0, 256), (0, 192), (0, 192), (0, 96),
            ),
            "MAX_SIZE": 2500, "FLIP": True, "SPECIAL_NMS": "none", "TH": 0.6, "PRE_NMS_TOP_N": 1000,
            "NUM_CLASSES": 81, "SELECT_CLASSES": (),
        },
    },
}

# {section: {key: official default}} of placeholders: accepted and ignored whatever their value. The official
# task configs (odinw, lvis, flickr) and evaluation commands set them together with the ATSS/DYHEAD value
# they mean.
PLACEHOLDER_KEYS: dict[str, dict[str, Any]] = {
    "MODEL.FCOS": {"NUM_CLASSES": 81, "DETECTIONS_PER_IMG": 100},
    "MODEL.RETINANET": {"DETECTIONS_PER_IMG": 100},
    "MODEL.ROI_HEADS": {"DETECTIONS_PER_IMG": 100},
    "MODEL.ROI_BOX_HEAD": {"NUM_CLASSES": 81},
}

# {section: {key: official default}} of keys the official code reads nowhere: accepted and ignored whatever
# their value (the odinw configs set PREDEFINED_TEXT, GLIP-T sets DYHEAD.TOPK; ATSS.TOPK is the one read).
UNREAD_KEYS: dict[str, dict[str, Any]] = {
    "": {"TENSORBOARD_EXP": "OUTPUT"},
    "MODEL": {"DEBUG": False, "PRETRAIN_NAME": "", "MULTITASK": CN(new_allowed=True)},
    "MODEL.BACKBONE": {
        "GROUP": 1, "USE_GN": False, "USE_EN": False, "USE_DFCONV": False, "USE_DYRELU": False, "USE_SE": False,
        "FPN_LAYER": (), "EFFICIENT_DET_BIFPN_VERSION": 0,
    },
    "MODEL.LANGUAGE_BACKBONE": {"UNUSED_TOKEN": 106},
    "MODEL.FPN": {"USE_DYRELU": False},
    "MODEL.EVO_NORM": {"NUM_GROUPS": 8, "EPSILON": 1e-5},
    "MODEL.DYHEAD": {"GROUPS": 1, "TOPK": 9},
    "MODEL.ROI_BOX_HEAD": {"POOLER_ALIGNED": False},
    "MODEL.RESNETS": {"BACKBONE_OUT_CHANNELS": 256 * 4, "REVISION": "resnet_light"},
    "MODEL.CLIP": {"TOKENIZER": "clip"},
    "AUGMENT": {"USE_RA": 0},
    "DATASETS": {
        "PREDEFINED_TEXT": None, "BOX_THRESHOLD": 0.1, "ADD_DET_PROMPT_ADVANCED": False, "USE_COCO_FORMAT": False,
        "PROMPT_LIMIT_NEG": -1, "POS_QUESTION_PROB": 0.6, "NEG_QUESTION_PROB": 0.8, "FULL_QUESTION_PROB": 0.5,
    },
    "SOLVER": {"DISABLE_OUTPUT_DISTRIBUTED": False, "PROMPT_PROBING_LEVEL": -1.0},
    "SOLVER.CLIP_GRADIENTS": {"NORM_TYPE": 2.0},  # the official clipping always uses the L2 norm
}

# Key -> (values whose variant is built, what another value would select).
SUPPORTED_CHOICES: dict[str, tuple[tuple[Any, ...], str]] = {
    "MODEL.META_ARCHITECTURE": (("GeneralizedVLRCNN",), "another detector meta-architecture"),
    "MODEL.RPN_ARCHITECTURE": (("VLDYHEAD",), "another detection head (RPN, RetinaNet, FCOS, ATSS, DyHead)"),
    "MODEL.RPN_ONLY": ((True,), "ROI heads after the detection head (two-stage detection)"),
    "MODEL.BACKBONE.CONV_BODY": (("SWINT-FPN-RETINANET",), "another visual backbone"),
    "MODEL.SWINT.VERSION": (("v1",), "another Swin Transformer version (v2, VL)"),
    "MODEL.SWINT.APE": ((False,), "the Swin absolute position embedding"),
    "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE": (("bert-base-uncased",), "another language backbone (RoBERTa, CLIP, RNN)"),
    "MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE": (("bert-base-uncased",), "another tokenizer (RoBERTa, CLIP)"),
    "MODEL.DYHEAD.USE_GN": ((True,), "a DyHead tower without GroupNorm"),
    "MODEL.DYHEAD.USE_DYRELU": ((True,), "a DyHead tower without DyReLU"),
    "MODEL.DYHEAD.USE_DYFUSE": ((True,), "a DyHead tower without scale-aware attention"),
    "MODEL.DYHEAD.USE_DFCONV": ((True,), "a DyHead tower without deformable convs"),
    "MODEL.DYHEAD.FUSE_CONFIG.TYPE": (("MHA-B",), "another fusion type (MHA-S, SCAN, FILM, none)"),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_DOT_PRODUCT_TOKEN_LOSS": ((True,), "a head without dot-product token logits"),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_CLASSIFICATION_LOSS":
        ((False,), "the sigmoid classification loss beside the dot-product token loss"),
    "MODEL.RPN.USE_FPN": ((True,), "single-level anchors without the FPN"),
    "SOLVER.OPTIMIZER": (("SGD", "ADAMW"), "another optimizer"),
    "SOLVER.USE_COSINE": ((False,), "the cosine learning-rate schedule"),
    "DATASETS.SPECIAL_SAFEGUARD_FOR_COCO_GROUNDING": ((False,), "GLIP's LVIS caption sampling"),
    "DATASETS.CLASS_CONCAT": ((False,), "class-id offsets between concatenated datasets"),
    "DATASETS.SAMPLE_RATIO": ((0.0,), "random subsampling of the boxes of each image"),
    "TEST.EVAL_TASK": (("", "detection", "grounding"), "another evaluation task"),
    "DATASETS.FLICKR_GT_TYPE": (("separate", "merged"), "another Flickr30k ground-truth box type"),
}


def _equals_key(other: str) -> Callable[[Any, Callable[[str], Any]], bool]:
    """A rule: the value equals the config's `other` key (or `other` is absent from a partial config)."""
    def rule(value: Any, lookup: Callable[[str], Any]) -> bool:
        other_value = lookup(other)
        return other_value is _MISSING or value == other_value
    return rule


def _evaluates_with_inference(value: Any, lookup: Callable[[str], Any]) -> bool:
    """SOLVER.TEST_WITH_INFERENCE: only its True path (the prompted evaluation) runs during training."""
    return bool(value) or lookup("TEST.DURING_TRAINING") is not True


def _is_swin_stage_widths(value: Any, lookup: Callable[[str], Any]) -> bool:
    """MODEL.SWINT.OUT_CHANNELS: the widths EMBED_DIM * 2**i of the Swin stages."""
    embed_dim, depths = lookup("MODEL.SWINT.EMBED_DIM"), lookup("MODEL.SWINT.DEPTHS")
    if embed_dim is _MISSING or depths is _MISSING:
        return True
    return list(value) == [embed_dim * 2 ** i for i in range(len(depths))]


def _fused_language_or_no_fusion(value: Any, lookup: Callable[[str], Any]) -> bool:
    """USE_FUSED_FEATURES_DOT_PRODUCT False is built only without early fusion (GLIP-A).

    With early fusion the official head then replaces its last BERT layer by a no-op, a tower this port does not
    build.
    """
    return bool(value) or lookup("MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON") is False


# Key -> (rule on its value given the config, what is built). A value breaking the rule is refused.
BUILT_RULES: dict[str, tuple[Callable[[Any, Callable[[str], Any]], bool], str]] = {
    "MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT": (
        _fused_language_or_no_fusion, "True, or False with MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON False (GLIP-A)"),
    "MODEL.RPN.ASPECT_RATIOS": (lambda value, _: len(value) == 1, "one aspect ratio (one anchor per location)"),
    "MODEL.RPN.SCALES_PER_OCTAVE": (lambda value, _: value == 1, "1 (one anchor per location)"),
    "MODEL.BACKBONE.OUT_CHANNELS": (_equals_key("MODEL.DYHEAD.CHANNELS"), "MODEL.DYHEAD.CHANNELS"),
    "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE": (_equals_key("MODEL.DYHEAD.CHANNELS"), "MODEL.DYHEAD.CHANNELS"),
    "MODEL.BACKBONE.OUT_FEATURES": (lambda value, _: tuple(value)[-3:] == ("stage3", "stage4", "stage5"),
                                    "ending with 'stage3', 'stage4', 'stage5' (the FPN inputs C3-C5)"),
    "MODEL.SWINT.OUT_CHANNELS": (_is_swin_stage_widths, "the Swin stage widths MODEL.SWINT.EMBED_DIM * 2**i"),
    "SOLVER.TEST_WITH_INFERENCE": (_evaluates_with_inference, "True when TEST.DURING_TRAINING is True (the "
                                   "prompted evaluation; the official caption-based evaluation is not built)"),
}

# Keys of config/defaults.py that any value leaves without effect -> why. The official code has the same keys;
# here nothing reads them, either because officially they change nothing on the built path or because what
# reads them is refused above.
_NO_EFFECT_IN_TRANSFORMS = ("the official build_transforms reads it but builds only resize, horizontal flip and "
                            "normalisation, as here")
_GROUNDING_SETS_IGNORE = ("the official builder passes it to the dataset, and the grounding training sets "
                          "(CocoGrounding, the only ones this port trains on) ignore it")
_CAPTION_SETS_ONLY = ("read only by the official caption datasets (CaptionTSV, PseudoData, the bing_caption sets); "
                      "this port's catalog builds none of them (their names are refused), so it cannot change a run")
_COPY_OF_NAMED_SET = ("repeat factor of one named set of the official catalog (flickr30k, mixed, the odinw-8copy "
                      "sets), none of them in this port's catalog; DATASETS.GENERAL_COPY repeats the others")
NO_EFFECT_KEYS: dict[str, str] = {
    "MODEL.FOCAL.FG_IOU_THRESHOLD": "the IoU matcher of non-ATSS heads; the VL head assigns with ATSS (MODEL.ATSS)",
    "MODEL.FOCAL.BG_IOU_THRESHOLD": "the IoU matcher of non-ATSS heads; the VL head assigns with ATSS (MODEL.ATSS)",
    "MODEL.FOCAL.LOSS_ALPHA": "only the sigmoid classification loss reads it (USE_CLASSIFICATION_LOSS, refused); "
                              "the token loss uses MODEL.DYHEAD.FUSE_CONFIG.TOKEN_ALPHA",
    "MODEL.FOCAL.LOSS_GAMMA": "only the sigmoid classification loss reads it (USE_CLASSIFICATION_LOSS, refused); "
                              "the token loss uses MODEL.DYHEAD.FUSE_CONFIG.TOKEN_GAMMA",
    "MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE": "officially read only by the MHA-S fusion (not built); the MHA-B "
                                                "fusion always scales its residuals by gamma_v/gamma_l",
    "AUGMENT.VERTICAL_FLIP_PROB_TRAIN": _NO_EFFECT_IN_TRANSFORMS,
    "AUGMENT.BRIGHTNESS": _NO_EFFECT_IN_TRANSFORMS,
    "AUGMENT.CONTRAST": _NO_EFFECT_IN_TRANSFORMS,
    "AUGMENT.SATURATION": _NO_EFFECT_IN_TRANSFORMS,
    "AUGMENT.HUE": _NO_EFFECT_IN_TRANSFORMS,
    "AUGMENT.CROP_PROB": _NO_EFFECT_IN_TRANSFORMS,
    "AUGMENT.CROP_MIN_IOUS": _NO_EFFECT_IN_TRANSFORMS,
    "AUGMENT.CROP_MIN_SIZE": _NO_EFFECT_IN_TRANSFORMS,
    "DATASETS.USE_CROWD": _GROUNDING_SETS_IGNORE,
    "DATASETS.MAX_BOX": _GROUNDING_SETS_IGNORE,
    "DATASETS.USE_OD_AUG": _GROUNDING_SETS_IGNORE,
    "DATASETS.PROMPT_VERSION": _GROUNDING_SETS_IGNORE,
    "DATASETS.CONTROL_PROB": _GROUNDING_SETS_IGNORE,
    "DATASETS.RANDOM_SAMPLE_NEG": "the grounding training sets read it only with "
                                  "DATASETS.SPECIAL_SAFEGUARD_FOR_COCO_GROUNDING (refused)",
    "DATASETS.COCO_COPY": _COPY_OF_NAMED_SET,
    "DATASETS.LVIS_COPY": _COPY_OF_NAMED_SET,
    "DATASETS.FLICKR_COPY": _COPY_OF_NAMED_SET,
    "DATASETS.MIXED_COPY": _COPY_OF_NAMED_SET,
    "DATASETS.OBJECT365_COPY": _COPY_OF_NAMED_SET,
    "DATASETS.VG_COPY": _COPY_OF_NAMED_SET,
    "DATASETS.OI_COPY": _COPY_OF_NAMED_SET,
    "DATASETS.IN_COPY": _COPY_OF_NAMED_SET,
    "DATASETS.BING_INDEX_LIST": _CAPTION_SETS_ONLY,
    "DATASETS.CAPTION_MIN_BOX": _CAPTION_SETS_ONLY,
    "DATASETS.REPLACE_CLEAN_LABEL": _CAPTION_SETS_ONLY,
    "DATASETS.FURTHER_SCREEN": _CAPTION_SETS_ONLY,
    "DATASETS.CAPTION_CONF": _CAPTION_SETS_ONLY,
    "DATASETS.CAPTION_NMS": _CAPTION_SETS_ONLY,
    "DATASETS.PACK_RANDOM_CAPTION_NUMBER": _CAPTION_SETS_ONLY,
    "DATASETS.INFERENCE_CAPTION": _CAPTION_SETS_ONLY,
    "DATASETS.SAMPLE_NEGATIVE_FOR_GROUNDING_DATA": _CAPTION_SETS_ONLY,
    "DATASETS.RANDOM_PACK_PROB": _CAPTION_SETS_ONLY,
    "DATASETS.NO_RANDOM_PACK_PROBABILITY": _CAPTION_SETS_ONLY,
    "DATASETS.SAFEGUARD_POSITIVE_CAPTION": _CAPTION_SETS_ONLY,
    "DATASETS.CAPTION_FORMAT_VERSION": _CAPTION_SETS_ONLY,
    "DATASETS.LOCAL_DEBUG": _CAPTION_SETS_ONLY,
    "SOLVER.DATASET_LENGTH": "an output: the official data builder writes the training set's length there",
    "PATHS_CATALOG": "the catalog is this package's paths_catalog.py (add datasets with DATASETS.REGISTER); "
                     "an official dump holds the dumping machine's path",
}

# {section: key names} of config/defaults.py that the code reads: a builder maps them to constructor arguments
# or a tool uses them. The key-walk test fails on a defaults key that is in no table of this module, so that a
# new key cannot be ignored unnoticed, and checks that each key listed here appears in the code.
READ_KEYS: dict[str, tuple[str, ...]] = {
    "": ("OUTPUT_DIR",),
    "MODEL": ("DEVICE", "WEIGHT", "LINEAR_PROB", "EXECUTION_PLAN", "ALLOW_MISSING_WEIGHTS"),
    "MODEL.BACKBONE": ("FREEZE_CONV_BODY_AT", "FREEZE", "OUT_CHANNELS", "OUT_FEATURES", "USE_CHECKPOINT"),
    "MODEL.SWINT": ("EMBED_DIM", "OUT_CHANNELS", "DEPTHS", "NUM_HEADS", "WINDOW_SIZE", "MLP_RATIO",
                    "DROP_PATH_RATE"),
    "MODEL.FPN": ("FREEZE", "DROP_BLOCK", "DROP_PROB", "DROP_SIZE"),
    "MODEL.GROUP_NORM": ("NUM_GROUPS",),
    "MODEL.LANGUAGE_BACKBONE": ("FREEZE", "USE_CHECKPOINT", "LANG_DIM", "MAX_QUERY_LEN", "N_LAYERS", "MASK_SPECIAL",
                                "PAD_MAX", "MODEL_PATH", "TOKENIZER_PATH"),
    "MODEL.RPN": ("ANCHOR_SIZES", "ANCHOR_STRIDE", "ASPECT_RATIOS", "STRADDLE_THRESH", "OCTAVE", "SCALES_PER_OCTAVE",
                  "FREEZE"),
    "MODEL.ATSS": ("NUM_CLASSES", "INFERENCE_TH", "NMS_TH", "PRE_NMS_TOP_N", "TOPK", "REG_LOSS_WEIGHT",
                   "DETECTIONS_PER_IMG", "INFERENCE_TH_TRAIN", "PRE_NMS_TOP_N_TRAIN", "POST_NMS_TOP_N_TRAIN"),
    "MODEL.DYHEAD": ("NUM_CLASSES", "PRIOR_PROB", "NUM_CONVS", "CHANNELS", "SCORE_AGG", "LOG_SCALE",
                     "USE_CHECKPOINT"),
    "MODEL.DYHEAD.FUSE_CONFIG": (
        "JOINT_EMB_SIZE", "TOKEN_GAMMA", "TOKEN_ALPHA", "DOT_PRODUCT_TOKEN_LOSS_WEIGHT", "CLAMP_MIN_FOR_UNDERFLOW",
        "CLAMP_MAX_FOR_OVERFLOW", "CLAMP_BERTATTN_MIN_FOR_UNDERFLOW", "CLAMP_BERTATTN_MAX_FOR_OVERFLOW",
        "CLAMP_DOT_PRODUCT", "ADD_LINEAR_LAYER", "ATTN_DROPOUT", "ATTN_EMBED_DIM", "ATTN_NUM_HEADS",
        "EARLY_FUSE_ON", "USE_FUSED_FEATURES_DOT_PRODUCT",
    ),
    "INPUT": ("MIN_SIZE_TRAIN", "MAX_SIZE_TRAIN", "MIN_SIZE_TEST", "MAX_SIZE_TEST", "PIXEL_MEAN", "PIXEL_STD",
              "TO_BGR255", "FORMAT", "FIX_RES"),
    "AUGMENT": ("FLIP_PROB_TRAIN", "MULT_MIN_SIZE_TRAIN"),
    "DATASETS": ("TRAIN", "TEST", "CLASS_AGNOSTIC", "FEW_SHOT", "SHUFFLE_SEED", "REGISTER", "GENERAL_COPY",
                 "GENERAL_COPY_TEST",
                 "ADD_DET_PROMPT", "DISABLE_SHUFFLE", "DISABLE_CLIP_TO_IMAGE", "SEPARATION_TOKENS",
                 "TRAIN_DATASETNAME_SUFFIX", "TEST_DATASETNAME_SUFFIX", "OVERRIDE_CATEGORY", "USE_OVERRIDE_CATEGORY",
                 "SUPRESS_QUERY", "USE_SUPRESS_QUERY", "USE_CAPTION_PROMPT", "CAPTION_PROMPT", "LVIS_USE_NORMAL_AP",
                 "FLICKR_GT_TYPE"),
    "DATALOADER": ("NUM_WORKERS", "SIZE_DIVISIBILITY", "ASPECT_RATIO_GROUPING", "USE_RANDOM_SEED"),
    "SOLVER": ("USE_AMP", "MAX_ITER", "MAX_EPOCH", "OPTIMIZER", "BASE_LR", "LANG_LR", "BACKBONE_BODY_LR_FACTOR",
               "BIAS_LR_FACTOR", "GRAD_CLIP", "MODEL_EMA", "MOMENTUM", "WEIGHT_DECAY", "WEIGHT_DECAY_BIAS",
               "WEIGHT_DECAY_NORM_FACTOR", "GAMMA", "STEPS", "WARMUP_FACTOR", "WARMUP_ITERS", "WARMUP_METHOD",
               "CHECKPOINT_PERIOD", "CHECKPOINT_PER_EPOCH", "IMS_PER_BATCH", "MAX_NEG_PER_BATCH", "SEED",
               "FIND_UNUSED_PARAMETERS", "USE_EMA_FOR_MONITOR", "AMP_DTYPE", "LOG_PERIOD", "KEEP_LAST_CHECKPOINTS",
               "SKIP_NONFINITE_STEPS", "DDP_TIMEOUT_MINUTES", "USE_AUTOSTEP", "STEP_PATIENCE", "MIN_LR",
               "AUTO_TERMINATE_PATIENCE", "TUNING_HIGHLEVEL_OVERRIDE", "WEIGHT_DECAY_SCHEDULE",
               "WEIGHT_DECAY_SCHEDULE_RATIO"),
    "SOLVER.CLIP_GRADIENTS": ("ENABLED", "CLIP_VALUE", "CLIP_TYPE"),
    "TEST": ("EXPECTED_RESULTS", "EXPECTED_RESULTS_SIGMA_TOL", "DURING_TRAINING", "IMS_PER_BATCH", "SUBSET",
             "CHUNKED_EVALUATION", "MDETR_STYLE_AGGREGATE_CLASS_NUM", "AFTER_TRAINING", "EVAL_PERIOD"),
}


def _node(cfg: CN, section: str) -> CN:
    """The sub-node of `cfg` at dotted `section` ("" = root), created where missing."""
    node = cfg
    for name in filter(None, section.split(".")):
        if name not in node:
            node[name] = CN()
        node = node[name]
    return node


def _add(cfg: CN, table: dict[str, dict[str, Any]]) -> None:
    """Add the {section: {key: default}} table to `cfg`, refusing to redefine a key."""
    for section, keys in table.items():
        node = _node(cfg, section)
        for key, default in keys.items():
            if key in node:
                raise KeyError(f"config key defined twice: {_full_key(section, key)}")
            node[key] = copy.deepcopy(default)


def add_compatibility_keys(cfg: CN) -> None:
    """Add the keys of unbuilt features, the placeholders and the unread keys, with official defaults, to `cfg`."""
    for sections in UNBUILT_FEATURES.values():
        _add(cfg, sections)
    _add(cfg, PLACEHOLDER_KEYS)
    _add(cfg, UNREAD_KEYS)


def _full_key(section: str, key: str) -> str:
    """The dotted key path of `key` in `section`."""
    return ".".join(filter(None, section.split(".") + [key]))


_MISSING = object()


def _lookup(cfg: CN, full_key: str) -> Any:
    """The value at dotted `full_key`, or _MISSING when `cfg` lacks it (a partial config)."""
    node = cfg
    for name in full_key.split("."):
        if not isinstance(node, dict) or name not in node:
            return _MISSING
        node = node[name]
    return node


def _canonical(value: Any) -> Any:
    """Tuples and lists compare equal, recursively (a merged or dumped config may hold either)."""
    if isinstance(value, (tuple, list)):
        return [_canonical(v) for v in value]
    return value


def _differs(value: Any, default: Any) -> bool:
    """Whether `value` is a setting other than the official `default`."""
    if isinstance(default, CN):  # an open section (new_allowed): anything in it is a setting
        return len(value) > 0
    return _canonical(value) != _canonical(default)


def _in_sections(full_key: str, sections: Sequence[str] | None) -> bool:
    """Whether `full_key` lies in one of the dotted `sections` (None: every key)."""
    return sections is None or any(full_key == s or full_key.startswith(s + ".") for s in sections)


def _refused_choices(cfg: CN, sections: Sequence[str] | None) -> list[str]:
    """Messages for the SUPPORTED_CHOICES and BUILT_RULES keys of `cfg` set to a value that is not built."""
    problems = []
    for full_key, (supported, selects) in SUPPORTED_CHOICES.items():
        value = _lookup(cfg, full_key)
        if _in_sections(full_key, sections) and value is not _MISSING and value not in supported:
            problems.append(f"{full_key} = {value!r} selects {selects}, which this port does not build; "
                            f"supported: {', '.join(repr(v) for v in supported)}")
    for full_key, (rule, built) in BUILT_RULES.items():
        value = _lookup(cfg, full_key)
        if _in_sections(full_key, sections) and value is not _MISSING and not rule(value, lambda k: _lookup(cfg, k)):
            problems.append(f"{full_key} = {value!r} is not built by this port; supported: {built}")
    return problems


def _refused_features(cfg: CN, sections: Sequence[str] | None) -> list[str]:
    """Messages for the UNBUILT_FEATURES keys of `cfg` set to a value other than their official default."""
    problems = []
    for feature, feature_sections in UNBUILT_FEATURES.items():
        for section, keys in feature_sections.items():
            for key, default in keys.items():
                full_key = _full_key(section, key)
                value = _lookup(cfg, full_key)
                if _in_sections(full_key, sections) and value is not _MISSING and _differs(value, default):
                    problems.append(f"{full_key} = {value!r} configures {feature}, which this port does not "
                                    f"build; leave it at its default {default!r}")
    return problems


def unsupported_settings(cfg: CN, sections: Sequence[str] | None = None) -> list[str]:
    """One message per setting of `cfg` (in `sections`, None: all) that this port does not build (empty if none)."""
    return _refused_choices(cfg, sections) + _refused_features(cfg, sections)


def check_supported(cfg: CN, sections: Sequence[str] | None = None) -> None:
    """Raise ValueError naming every key, value and feature of `cfg` (in `sections`) that this port does not build.

    build_detection_model checks every key but SOLVER; the data, evaluation and solver builders check their own
    sections (a test may build a data loader from a config whose model part is not the built one).
    """
    problems = unsupported_settings(cfg, sections)
    if problems:
        raise ValueError("Unsupported config settings:\n  " + "\n  ".join(problems))


def _table_keys(table: dict[str, Any]) -> list[str]:
    """The full keys of a {section: {key: ...} or (key, ...)} table."""
    return [_full_key(section, key) for section, keys in table.items() for key in keys]


def key_status(full_key: str) -> str:
    """How this port treats `full_key`: "read", "no effect: <why>", "refused: <feature>", or "unknown"."""
    if full_key in SUPPORTED_CHOICES:
        return f"refused: {SUPPORTED_CHOICES[full_key][1]}"
    if full_key in BUILT_RULES:
        return f"refused unless {BUILT_RULES[full_key][1]}"
    for feature, sections in UNBUILT_FEATURES.items():
        if full_key in _table_keys(sections):
            return f"refused: {feature}"
    if full_key in _table_keys(READ_KEYS):
        return "read"
    if full_key in NO_EFFECT_KEYS:
        return f"no effect: {NO_EFFECT_KEYS[full_key]}"
    if full_key in _table_keys(PLACEHOLDER_KEYS):
        return "no effect: a placeholder the official task configs set together with the ATSS/DYHEAD key they mean"
    if full_key in _table_keys(UNREAD_KEYS):
        return "no effect: the official code reads it nowhere"
    return "unknown"
