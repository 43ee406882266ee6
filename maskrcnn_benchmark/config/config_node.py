"""The yacs config node of this project: merge_from_file names the file in its errors."""
import yaml
from yacs.config import CfgNode


class ConfigFileError(ValueError):
    """A config file that cannot be read as YAML."""


def yaml_error_message(path: str, error: yaml.YAMLError) -> str:
    """What is wrong in the YAML file `path`, with the line and column when yaml knows them."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    # yaml parsed the text as a string, so its own message says "<unicode string>" where the file name belongs.
    detail = str(error).replace('"<unicode string>"', f'"{path}"')
    return (f"Config file {path}{where} is not valid YAML (look for a wrong indentation, a missing ':' or an "
            f"unclosed bracket or quote there):\n{detail}")


class ConfigNode(CfgNode):
    """yacs CfgNode whose merge_from_file names the file when it is missing, is not YAML or sets an unknown key."""

    def merge_from_file(self, cfg_filename: str) -> None:
        """Merge the YAML (or yacs Python) config file `cfg_filename` into this node."""
        try:
            with open(cfg_filename) as f:
                loaded = self.load_cfg(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"Config file not found: {cfg_filename}") from None
        except yaml.YAMLError as error:
            raise ConfigFileError(yaml_error_message(cfg_filename, error)) from error
        try:
            self.merge_from_other_cfg(loaded)
        except KeyError as error:
            raise KeyError(f"Config file {cfg_filename}: {error.args[0]}") from error
