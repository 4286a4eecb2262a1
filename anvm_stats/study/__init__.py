"""Studies as files: a TOML study (see :mod:`anvm_stats.study.schema` for every key) is validated up front,
then :func:`run_study` trains (with a content-hash cache of weights), sweeps, saves and reports it."""

from .config import Study, StudyError
from .runner import RunResult, load_results, run_study, save_results
from .schema import load_study, parse_study

__all__ = ["Study", "StudyError", "load_study", "parse_study", "run_study", "RunResult",
           "load_results", "save_results", "builtin_study"]


def builtin_study(name: str):
    """Path of a study shipped inside the package (``anvm_stats/study/builtin/<name>.toml``)."""
    from importlib.resources import files

    return files(__package__).joinpath("builtin", f"{name}.toml")
