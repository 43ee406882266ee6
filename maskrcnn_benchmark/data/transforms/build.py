"""Train / test transforms from the config."""
from .transforms import Compose, Normalize, RandomHorizontalFlip, Resize, ToTensor


def input_format(cfg) -> str:
    """INPUT.FORMAT when set, else "bgr255" (INPUT.TO_BGR255) or "rgb"."""
    if cfg.INPUT.FORMAT:
        return cfg.INPUT.FORMAT
    return "bgr255" if cfg.INPUT.TO_BGR255 else "rgb"


def build_transforms(cfg, is_train: bool = True) -> Compose:
    """Resize, horizontal flip, ToTensor, Normalize.

    Training: short side drawn from AUGMENT.MULT_MIN_SIZE_TRAIN (when non-empty, else INPUT.MIN_SIZE_TRAIN),
    INPUT.MAX_SIZE_TRAIN, flip probability AUGMENT.FLIP_PROB_TRAIN. Test: INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST,
    no flip. The other AUGMENT keys (colour jitter, crop, vertical flip) are not used, as in GLIP.
    """
    if is_train:
        min_size = cfg.AUGMENT.MULT_MIN_SIZE_TRAIN or cfg.INPUT.MIN_SIZE_TRAIN
        max_size = cfg.INPUT.MAX_SIZE_TRAIN
        flip_prob = cfg.AUGMENT.FLIP_PROB_TRAIN
    else:
        min_size = cfg.INPUT.MIN_SIZE_TEST
        max_size = cfg.INPUT.MAX_SIZE_TEST
        flip_prob = 0.0
    return Compose([
        Resize(min_size, max_size, restrict=cfg.INPUT.FIX_RES),
        RandomHorizontalFlip(flip_prob),
        ToTensor(),
        Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, format=input_format(cfg)),
    ])
