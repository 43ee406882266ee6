"""Detector builder."""
from .generalized_vl_rcnn import GeneralizedVLRCNN

_META_ARCHITECTURES = {"GeneralizedVLRCNN": GeneralizedVLRCNN}


def build_detection_model(cfg) -> GeneralizedVLRCNN:
    """Build the detector named by MODEL.META_ARCHITECTURE after checking the config only asks for built features."""
    from maskrcnn_benchmark.config import check_supported

    # SOLVER is checked by the solver builders, when a run trains: a schedule that is not built (the official
    # GLIP-L config's weight-decay schedule) must not stop building the model to evaluate or export it.
    check_supported(cfg, [section for section in cfg if section != "SOLVER"])
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in _META_ARCHITECTURES:
        raise ValueError(f"MODEL.META_ARCHITECTURE={name!r} is not built by this project; "
                         f"supported: {sorted(_META_ARCHITECTURES)}.")
    return _META_ARCHITECTURES[name](cfg)
