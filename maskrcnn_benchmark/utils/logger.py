"""Logging set-up: rank 0 logs to stdout and to a file in the output folder; other ranks stay quiet."""
import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def setup_logger(name: str, save_dir: str, distributed_rank: int, filename: str = "log.txt") -> logging.Logger:
    """The logger `name` at DEBUG level with a stdout handler and `save_dir/filename` (rank 0 only).

    Calling it again replaces the handlers it added before, so repeated runs in one process do not repeat lines.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    for handler in [h for h in logger.handlers if getattr(h, "_glip_handler", False)]:
        logger.removeHandler(handler)
        handler.close()
    if distributed_rank > 0:
        return logger
    formatter = logging.Formatter(LOG_FORMAT)
    handlers = [logging.StreamHandler(stream=sys.stdout)]
    if save_dir:
        handlers.append(logging.FileHandler(os.path.join(save_dir, filename)))
    for handler in handlers:
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(formatter)
        handler._glip_handler = True
        logger.addHandler(handler)
    return logger
