"""The Optuna storage URL (engine.storage), checked before a sweep starts anything.

SQLAlchemy parses the URL and loads its dialect and driver, as Optuna's RDBStorage would later: a URL it cannot
use is one line naming engine.storage here, not a SQLAlchemy traceback after Ray, the log server and the sweep's
folder exist. Only the import is tried: a server that is down shows when the study opens.
"""

from lorasweep.errors import ConfigError

ALLOWED = (
    "null (sqlite in the sweep's folder) or a SQLAlchemy database URL with an installed driver, e.g. "
    "sqlite:////abs/path/optuna.db or postgresql+psycopg2://user@host:5432/db"
)


def check(url: str | None) -> None:
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(str(url)).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError) as e:
        raise ConfigError("engine.storage", url, f"{ALLOWED} ({str(e).splitlines()[0]})") from None
    except ImportError as e:  # the dialect is known, its driver is not installed
        raise ConfigError("engine.storage", url, f"{ALLOWED} (its driver is not installed: {e})") from None
