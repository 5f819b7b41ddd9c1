"""Config: compose conf/ with Hydra overrides, then validate every field before anything loads."""

import os
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lorasweep.errors import ConfigError

CONF_DIR = Path(os.environ.get("LORASWEEP_CONF", Path(__file__).resolve().parent.parent / "conf"))


def compose(overrides: list[str] = (), config_name: str = "config") -> DictConfig:
    """Compose conf/<config_name>.yaml with Hydra overrides; a bad override is a ConfigError."""
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="lorasweep"):
            cfg = hydra_compose(config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("override", " ".join(overrides), f"Hydra rejected it: {first}") from None
    return cfg
