"""Default values of every config key, identical (values and types) to the official GLIP defaults.

This file holds the keys of the GLIP-T path (model, data, solver, test, tools). The keys the official
defaults define for features this port does not build are added, apart, by
:func:`maskrcnn_benchmark.config.compat.add_compatibility_keys`, so that every official config file and
config dump still merges. Keys the port adds are in one marked block at the end. config/compat.py says of
every key whether it is read, accepted without effect (and why) or refused when set: a new key goes there too
(tests/test_config.py walks them all).

Types matter: yacs refuses to merge a value whose type differs from the default's (tuples and lists are
interchangeable, None accepts anything), so int/float/tuple/list choices below follow the official ones.
"""
import os

from .compat import add_compatibility_keys
from .config_node import ConfigNode as CN

_C = CN()

# ---------------------------------------------------------------------------------------------------------
# Model: architecture selection and weights
# ---------------------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.RPN_ONLY = False  # GLIP-T sets True: the VL head's detections are the final output
_C.MODEL.DEVICE = "cuda"
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
_C.MODEL.RPN_ARCHITECTURE = "RPN"
# A checkpoint path (or a catalog:// name resolved through the paths catalog); "" = random init
_C.MODEL.WEIGHT = ""
# Linear probing: only the head's final prediction layers stay trainable
_C.MODEL.LINEAR_PROB = False

# ---------------------------------------------------------------------------------------------------------
# Visual backbone
# ---------------------------------------------------------------------------------------------------------
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.CONV_BODY = "R-50-C4"
_C.MODEL.BACKBONE.FREEZE_CONV_BODY_AT = 2  # Swin stages up to this index are frozen (-1: none)
_C.MODEL.BACKBONE.FREEZE = False  # freeze the whole backbone body
_C.MODEL.BACKBONE.OUT_CHANNELS = 256 * 4  # FPN output width
_C.MODEL.BACKBONE.OUT_FEATURES = ("stage2", "stage3", "stage4", "stage5")
_C.MODEL.BACKBONE.USE_CHECKPOINT = False  # activation checkpointing in the Swin blocks

# Swin Transformer (v1)
_C.MODEL.SWINT = CN()
_C.MODEL.SWINT.EMBED_DIM = 96
_C.MODEL.SWINT.OUT_CHANNELS = (96, 192, 384, 768)  # width of each stage's output
_C.MODEL.SWINT.DEPTHS = (2, 2, 6, 2)
_C.MODEL.SWINT.NUM_HEADS = (3, 6, 12, 24)
_C.MODEL.SWINT.WINDOW_SIZE = 7
_C.MODEL.SWINT.MLP_RATIO = 4
_C.MODEL.SWINT.DROP_PATH_RATE = 0.2
_C.MODEL.SWINT.APE = False  # absolute position embedding
_C.MODEL.SWINT.VERSION = "v1"

# FPN on top of the Swin stages (P3-P7)
_C.MODEL.FPN = CN()
_C.MODEL.FPN.FREEZE = False
_C.MODEL.FPN.DROP_BLOCK = True  # DropBlock on the merged P3/P4 laterals, training only
_C.MODEL.FPN.DROP_PROB = 0.3
_C.MODEL.FPN.DROP_SIZE = 3

# GroupNorm used by the DyHead tower
_C.MODEL.GROUP_NORM = CN()
_C.MODEL.GROUP_NORM.NUM_GROUPS = 16

# ---------------------------------------------------------------------------------------------------------
# Language backbone (BERT)
# ---------------------------------------------------------------------------------------------------------
_C.MODEL.LANGUAGE_BACKBONE = CN()
_C.MODEL.LANGUAGE_BACKBONE.FREEZE = False
_C.MODEL.LANGUAGE_BACKBONE.USE_CHECKPOINT = False
_C.MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE = "bert-base-uncased"
_C.MODEL.LANGUAGE_BACKBONE.MODEL_TYPE = "bert-base-uncased"
_C.MODEL.LANGUAGE_BACKBONE.LANG_DIM = 768  # must equal the language model's hidden size
_C.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 256
_C.MODEL.LANGUAGE_BACKBONE.N_LAYERS = 1  # number of last hidden layers averaged
_C.MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL = False  # hide special tokens ([CLS], [SEP], ...) from attention
_C.MODEL.LANGUAGE_BACKBONE.PAD_MAX = True  # pad every caption to MAX_QUERY_LEN (else to the longest)

# ---------------------------------------------------------------------------------------------------------
# Anchors (the VL head uses the RPN anchor generator options)
# ---------------------------------------------------------------------------------------------------------
_C.MODEL.RPN = CN()
_C.MODEL.RPN.USE_FPN = False
_C.MODEL.RPN.ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one per FPN level
_C.MODEL.RPN.ANCHOR_STRIDE = (16,)
_C.MODEL.RPN.ASPECT_RATIOS = (0.5, 1.0, 2.0)
_C.MODEL.RPN.STRADDLE_THRESH = 0  # anchors beyond the image by more than this are not visible (-1: keep all)
_C.MODEL.RPN.OCTAVE = 2.0
_C.MODEL.RPN.SCALES_PER_OCTAVE = 3
_C.MODEL.RPN.FREEZE = False  # freeze the whole head

# ---------------------------------------------------------------------------------------------------------
# ATSS assignment, loss and post-processing (used by the VL head)
# ---------------------------------------------------------------------------------------------------------
_C.MODEL.ATSS = CN()
_C.MODEL.ATSS.NUM_CLASSES = 81  # including background; the score tensor has NUM_CLASSES - 1 columns
_C.MODEL.ATSS.INFERENCE_TH = 0.05
_C.MODEL.ATSS.NMS_TH = 0.6
_C.MODEL.ATSS.PRE_NMS_TOP_N = 1000
_C.MODEL.ATSS.TOPK = 9  # nearest anchors per level taken as positive candidates
_C.MODEL.ATSS.REG_LOSS_WEIGHT = 2.0
_C.MODEL.ATSS.DETECTIONS_PER_IMG = 100
_C.MODEL.ATSS.INFERENCE_TH_TRAIN = 0.0
_C.MODEL.ATSS.PRE_NMS_TOP_N_TRAIN = 3000
_C.MODEL.ATSS.POST_NMS_TOP_N_TRAIN = 1000

# Focal-loss options of the official ATSS loss's classification loss and IoU matcher: no effect here (compat.py)
_C.MODEL.FOCAL = CN()
_C.MODEL.FOCAL.FG_IOU_THRESHOLD = 0.5
_C.MODEL.FOCAL.BG_IOU_THRESHOLD = 0.4
_C.MODEL.FOCAL.LOSS_ALPHA = 0.25
_C.MODEL.FOCAL.LOSS_GAMMA = 2.0

# ---------------------------------------------------------------------------------------------------------
# Vision-language DyHead
# ---------------------------------------------------------------------------------------------------------
_C.MODEL.DYHEAD = CN()
_C.MODEL.DYHEAD.NUM_CLASSES = 81  # including background
_C.MODEL.DYHEAD.PRIOR_PROB = 0.01  # initial foreground probability (sets bias0)
_C.MODEL.DYHEAD.NUM_CONVS = 4  # number of tower blocks (fusion + BERT layer + DyConv each)
_C.MODEL.DYHEAD.CHANNELS = 128
_C.MODEL.DYHEAD.USE_DFCONV = False  # modulated deformable convs in DyConv
_C.MODEL.DYHEAD.SCORE_AGG = "MEAN"  # how token scores make a class score: MEAN or MAX
_C.MODEL.DYHEAD.LOG_SCALE = 0.0  # initial dot-product temperature (log)
_C.MODEL.DYHEAD.USE_GN = False
_C.MODEL.DYHEAD.USE_DYFUSE = False  # scale-aware attention across levels
_C.MODEL.DYHEAD.USE_DYRELU = False
_C.MODEL.DYHEAD.USE_CHECKPOINT = False  # recompute the fusion in backward to save memory

_C.MODEL.DYHEAD.FUSE_CONFIG = CN()
_C.MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON = False  # image-text fusion inside the tower
_C.MODEL.DYHEAD.FUSE_CONFIG.TYPE = ""  # "MHA-B": bidirectional multi-head attention
_C.MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE = 256  # visual width seen by the fusion attention
_C.MODEL.DYHEAD.FUSE_CONFIG.USE_CLASSIFICATION_LOSS = False  # else loss_cls is returned times 0
_C.MODEL.DYHEAD.FUSE_CONFIG.TOKEN_GAMMA = 2.0  # focal loss of the token (dot-product) loss
_C.MODEL.DYHEAD.FUSE_CONFIG.TOKEN_ALPHA = 0.25
_C.MODEL.DYHEAD.FUSE_CONFIG.USE_DOT_PRODUCT_TOKEN_LOSS = False
_C.MODEL.DYHEAD.FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT = 1.0
_C.MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE = True  # MHA-S only: MHA-B always has its gammas (no effect)
_C.MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT = False  # dot product with the fused text
# Clamps that keep fp16 attention/logits finite
_C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MIN_FOR_UNDERFLOW = False
_C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MAX_FOR_OVERFLOW = False
_C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MIN_FOR_UNDERFLOW = False
_C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MAX_FOR_OVERFLOW = False
_C.MODEL.DYHEAD.FUSE_CONFIG.CLAMP_DOT_PRODUCT = False
# Prompt tuning: a trainable linear layer on the text features (fine-tuning "language_prompt_v2/v4")
_C.MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER = False

# ---------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.MIN_SIZE_TRAIN = 800
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
_C.INPUT.PIXEL_MEAN = [102.9801, 115.9465, 122.7717]  # BGR, 0-255 scale
_C.INPUT.PIXEL_STD = [1.0, 1.0, 1.0]
_C.INPUT.TO_BGR255 = True  # feed BGR in [0, 255]
_C.INPUT.FORMAT = ""  # "" or "rgb"/"bgr"/"rgb255"/"bgr255": overrides TO_BGR255
_C.INPUT.FIX_RES = False  # resize to exactly (MIN_SIZE, MAX_SIZE)

# ---------------------------------------------------------------------------------------------------------
# Training augmentation
# ---------------------------------------------------------------------------------------------------------
_C.AUGMENT = CN()
_C.AUGMENT.FLIP_PROB_TRAIN = 0.5
# Vertical flip, colour jitter and crop: read by the official build_transforms but never applied (no effect)
_C.AUGMENT.VERTICAL_FLIP_PROB_TRAIN = 0.0
_C.AUGMENT.MULT_MIN_SIZE_TRAIN = ()  # if set, a random choice of these replaces INPUT.MIN_SIZE_TRAIN
_C.AUGMENT.BRIGHTNESS = 0.0
_C.AUGMENT.CONTRAST = 0.0
_C.AUGMENT.SATURATION = 0.0
_C.AUGMENT.HUE = 0.0
_C.AUGMENT.CROP_PROB = 0.5
_C.AUGMENT.CROP_MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9)
_C.AUGMENT.CROP_MIN_SIZE = 0.3

# ---------------------------------------------------------------------------------------------------------
# Datasets (names from the paths catalog or from REGISTER)
# ---------------------------------------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.TEST = ()
_C.DATASETS.USE_CROWD = False  # officially ignored by the grounding training sets (no effect)
_C.DATASETS.CLASS_AGNOSTIC = False
_C.DATASETS.CLASS_CONCAT = False  # offset the class ids of concatenated datasets
_C.DATASETS.MAX_BOX = -1  # officially ignored by the grounding training sets (no effect)
_C.DATASETS.SAMPLE_RATIO = 0.0  # random box subsampling: refused when set
_C.DATASETS.FEW_SHOT = 0  # k-shot subset of the training set (0: all)
# Non-zero: shuffle the image ids with random.Random(seed) before the greedy k-shot pick (the official COCODataset
# rule, applied here to the grounding training sets too, so that the few-shot recipe's seeds pick other subsets).
_C.DATASETS.SHUFFLE_SEED = 0
_C.DATASETS.REGISTER = CN(new_allowed=True)  # extra datasets: name -> {img_dir, ann_file, ...}
# Repeat factors of the training sets (GENERAL_COPY: any other set; -1: no repeat)
_C.DATASETS.COCO_COPY = 1
_C.DATASETS.LVIS_COPY = 1
_C.DATASETS.FLICKR_COPY = 1
_C.DATASETS.MIXED_COPY = 1
_C.DATASETS.OBJECT365_COPY = 1
_C.DATASETS.VG_COPY = 1
_C.DATASETS.OI_COPY = 1
_C.DATASETS.IN_COPY = 1
_C.DATASETS.GENERAL_COPY = -1
_C.DATASETS.GENERAL_COPY_TEST = -1
# Detection data turned into grounding captions
_C.DATASETS.RANDOM_SAMPLE_NEG = -1  # read only with SPECIAL_SAFEGUARD_FOR_COCO_GROUNDING (no effect)
_C.DATASETS.ADD_DET_PROMPT = False
_C.DATASETS.USE_OD_AUG = False
_C.DATASETS.CONTROL_PROB = ()  # officially ignored by the grounding training sets (no effect)
_C.DATASETS.DISABLE_SHUFFLE = False  # keep the class order in the caption
_C.DATASETS.PROMPT_VERSION = ""
_C.DATASETS.DISABLE_CLIP_TO_IMAGE = False
_C.DATASETS.SEPARATION_TOKENS = " "  # text between class names in a detection caption
_C.DATASETS.SPECIAL_SAFEGUARD_FOR_COCO_GROUNDING = False
# Evaluation and task-specific prompts
_C.DATASETS.LVIS_USE_NORMAL_AP = False  # LVIS: standard AP (300 per image) instead of fixed AP (10,000 per class)
_C.DATASETS.TRAIN_DATASETNAME_SUFFIX = ""  # appended to every training set name (e.g. "_grounding")
_C.DATASETS.TEST_DATASETNAME_SUFFIX = ""
_C.DATASETS.OVERRIDE_CATEGORY = None  # JSON list of categories replacing the dataset's own
_C.DATASETS.USE_OVERRIDE_CATEGORY = False
_C.DATASETS.SUPRESS_QUERY = None
_C.DATASETS.USE_SUPRESS_QUERY = False
_C.DATASETS.USE_CAPTION_PROMPT = False
_C.DATASETS.CAPTION_PROMPT = None
_C.DATASETS.FLICKR_GT_TYPE = "separate"  # Flickr30k recall against any box of a phrase, or "merged": their union box
# Options of the official caption datasets (CaptionTSV, PseudoData, the bing_caption sets). This port's catalog
# cannot hold such a set, so they never change a run here: accepted without effect (config/compat.py).
_C.DATASETS.BING_INDEX_LIST = []
_C.DATASETS.CAPTION_MIN_BOX = 1
_C.DATASETS.REPLACE_CLEAN_LABEL = False
_C.DATASETS.FURTHER_SCREEN = False
_C.DATASETS.CAPTION_CONF = 0.9
_C.DATASETS.CAPTION_NMS = 0.9
_C.DATASETS.PACK_RANDOM_CAPTION_NUMBER = 0
_C.DATASETS.INFERENCE_CAPTION = False
_C.DATASETS.SAMPLE_NEGATIVE_FOR_GROUNDING_DATA = -1.0
_C.DATASETS.RANDOM_PACK_PROB = -1.0
_C.DATASETS.NO_RANDOM_PACK_PROBABILITY = 0.0
_C.DATASETS.SAFEGUARD_POSITIVE_CAPTION = True
_C.DATASETS.CAPTION_FORMAT_VERSION = "v1"
_C.DATASETS.LOCAL_DEBUG = False

# ---------------------------------------------------------------------------------------------------------
# Data loader
# ---------------------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.SIZE_DIVISIBILITY = 0  # pad batches to a multiple of this (0: no rounding)
_C.DATALOADER.ASPECT_RATIO_GROUPING = True  # batch portrait and landscape images separately
_C.DATALOADER.USE_RANDOM_SEED = False

# ---------------------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.USE_AMP = False
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.MAX_EPOCH = 0  # > 0 overrides MAX_ITER from the dataset length
_C.SOLVER.OPTIMIZER = "SGD"  # or "ADAMW"
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.LANG_LR = 0.00001  # learning rate of the language backbone
_C.SOLVER.BACKBONE_BODY_LR_FACTOR = 1.0
_C.SOLVER.BIAS_LR_FACTOR = 2
_C.SOLVER.GRAD_CLIP = 0.0  # > 0: clamp every gradient element to +-GRAD_CLIP
_C.SOLVER.CLIP_GRADIENTS = CN()  # gradient-norm clipping of the whole model
_C.SOLVER.CLIP_GRADIENTS.ENABLED = False
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.0
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
_C.SOLVER.MODEL_EMA = 0.0  # EMA decay of the weights (0: off)
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 0.0005
_C.SOLVER.WEIGHT_DECAY_BIAS = 0.0
_C.SOLVER.WEIGHT_DECAY_NORM_FACTOR = 1.0
_C.SOLVER.USE_COSINE = False  # cosine schedule instead of steps: refused (not built)
_C.SOLVER.MIN_LR = 0.000001  # lowest LR of the auto-step schedule
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)  # iterations, or fractions of MAX_ITER when < 1
# Multiply the LR by GAMMA after more than STEP_PATIENCE evaluations (TEST.DURING_TRAINING) without a better AP.
_C.SOLVER.USE_AUTOSTEP = False
_C.SOLVER.STEP_PATIENCE = 5
_C.SOLVER.WARMUP_FACTOR = 1.0 / 3
_C.SOLVER.WARMUP_ITERS = 500
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.CHECKPOINT_PERIOD = 2500
_C.SOLVER.CHECKPOINT_PER_EPOCH = -1.0  # > 0: checkpoint (and evaluate) every this many epochs
_C.SOLVER.TEST_WITH_INFERENCE = False  # must be True with TEST.DURING_TRAINING (the prompted evaluation)
# Stop training after this many evaluations in a row below the best AP (-1: never); model_best.pth is kept.
_C.SOLVER.AUTO_TERMINATE_PATIENCE = -1
_C.SOLVER.IMS_PER_BATCH = 16  # global batch size over all processes
_C.SOLVER.MAX_NEG_PER_BATCH = 0.1  # largest share of images without boxes in a batch
_C.SOLVER.SEED = 0
_C.SOLVER.FIND_UNUSED_PARAMETERS = True  # passed to DistributedDataParallel
_C.SOLVER.DATASET_LENGTH = -1  # filled in by the official data builder; nothing reads it (no effect)
# A preset of the freeze keys (config/tuning_presets.py) that tools/finetune.py applies; train_net ignores it.
_C.SOLVER.TUNING_HIGHLEVEL_OVERRIDE = None
_C.SOLVER.USE_EMA_FOR_MONITOR = False
_C.SOLVER.WEIGHT_DECAY_SCHEDULE = False  # weight decay x GAMMA at RATIO x each LR step (GLIP-L; engine/hooks.py)
_C.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO = 0.667

# ---------------------------------------------------------------------------------------------------------
# Test
# ---------------------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.EXPECTED_RESULTS = []
_C.TEST.EXPECTED_RESULTS_SIGMA_TOL = 4
_C.TEST.DURING_TRAINING = False
_C.TEST.IMS_PER_BATCH = 16  # global batch size over all processes
_C.TEST.EVAL_TASK = ""  # "detection" (class-name prompts; COCO or LVIS AP) or "grounding" (Flickr30k recall)
_C.TEST.SUBSET = -1  # evaluate only the first N images (-1: all)
_C.TEST.CHUNKED_EVALUATION = -1  # split the class list into prompts of this many classes (-1: one prompt)
_C.TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM = -1

# ---------------------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "OUTPUT"
# Python file defining DatasetCatalog/ModelCatalog. Machine-specific, so left out of the fixture dumps.
_C.PATHS_CATALOG = os.path.join(os.path.dirname(__file__), "paths_catalog.py")

# ---------------------------------------------------------------------------------------------------------
# Keys of features this port does not build: accepted so official files merge (see compat.py)
# ---------------------------------------------------------------------------------------------------------
add_compatibility_keys(_C)

# ---------------------------------------------------------------------------------------------------------
# Port-specific keys (not in the official defaults)
# ---------------------------------------------------------------------------------------------------------
# Language model config: "" = the bert-base-uncased config shipped in
# maskrcnn_benchmark/text/bert-base-uncased/; else a local folder holding a Hugging Face
# config.json (and weights), or a Hugging Face model name. The official code always loads MODEL_TYPE by name.
_C.MODEL.LANGUAGE_BACKBONE.MODEL_PATH = ""
# Tokenizer (vocabulary): "" = the shipped bert-base-uncased vocabulary; else a local folder or a model name.
_C.MODEL.LANGUAGE_BACKBONE.TOKENIZER_PATH = ""
# Dropout on the fusion attention probabilities (the official code hard-codes 0.1).
_C.MODEL.DYHEAD.FUSE_CONFIG.ATTN_DROPOUT = 0.1
# Inner width of the fusion attention (the official code hard-codes 2048).
_C.MODEL.DYHEAD.FUSE_CONFIG.ATTN_EMBED_DIM = 2048
# Number of heads of the fusion attention (the official code hard-codes 8).
_C.MODEL.DYHEAD.FUSE_CONFIG.ATTN_NUM_HEADS = 8
# How the model computes (layers/execution_plan.py): "auto" (the "cpu" plan on the CPU, "accelerator" on CUDA and
# NPU, chosen again when the model moves to another device type), "cpu", "accelerator" or "reference" (the
# official computation step by step, to check the others against).
_C.MODEL.EXECUTION_PLAN = "auto"
# Autocast dtype of SOLVER.USE_AMP: "" = float16 with the loss scaler on CUDA and NPU, bfloat16 on the CPU;
# "float16" (always with the loss scaler) or "bfloat16" (never) to choose. Ampere and Hopper GPUs run bfloat16
# as fast as float16 without loss scaling.
_C.SOLVER.AMP_DTYPE = ""
# Training loop: log every LOG_PERIOD iterations (hard-coded 20 officially); keep only the newest
# KEEP_LAST_CHECKPOINTS periodic checkpoints (0 = keep all); skip steps whose loss is NaN/Inf instead of stopping.
_C.SOLVER.LOG_PERIOD = 20
_C.SOLVER.KEEP_LAST_CHECKPOINTS = 0
_C.SOLVER.SKIP_NONFINITE_STEPS = False
# Several processes: a collective (gradient or loss all-reduce, barrier, gather) that waits longer than this many
# minutes for another process fails with an error naming it, so a hung, stopped or dead process ends the run
# (the official code keeps torch's default, 30 minutes). A float: 30.0. The other processes wait while rank 0
# computes the COCO metrics of an evaluation: raise it for very large evaluation sets.
_C.SOLVER.DDP_TIMEOUT_MINUTES = 30.0
# Evaluate DATASETS.TEST after training (the Ascend port's key; the official train_net never does, and ignores
# --skip-test), and every EVAL_PERIOD iterations when TEST.DURING_TRAINING (0 = at each checkpoint).
_C.TEST.AFTER_TRAINING = False
_C.TEST.EVAL_PERIOD = 0
# Accept a MODEL.WEIGHT that lacks more than half of the model's weights (another network, config or key prefix),
# and evaluate or demo with no weight at all: the weights not loaded keep their random initialisation. False: both
# are errors, so that a wrong or forgotten weight file cannot run unnoticed.
_C.MODEL.ALLOW_MISSING_WEIGHTS = False

PORT_KEYS = (
    "MODEL.LANGUAGE_BACKBONE.MODEL_PATH",
    "MODEL.LANGUAGE_BACKBONE.TOKENIZER_PATH",
    "MODEL.DYHEAD.FUSE_CONFIG.ATTN_DROPOUT",
    "MODEL.DYHEAD.FUSE_CONFIG.ATTN_EMBED_DIM",
    "MODEL.DYHEAD.FUSE_CONFIG.ATTN_NUM_HEADS",
    "MODEL.EXECUTION_PLAN",
    "SOLVER.AMP_DTYPE",
    "SOLVER.LOG_PERIOD",
    "SOLVER.KEEP_LAST_CHECKPOINTS",
    "SOLVER.SKIP_NONFINITE_STEPS",
    "SOLVER.DDP_TIMEOUT_MINUTES",
    "TEST.AFTER_TRAINING",
    "TEST.EVAL_PERIOD",
    "MODEL.ALLOW_MISSING_WEIGHTS",
)
