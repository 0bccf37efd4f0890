"""Run wasmpipe pipelines on a Ray cluster.

`wasmpipe run PIPELINE --engine ray` hands over to this package; it is
also a library (`run_pipeline`) and a command (`python -m wasmpipe_ray`).
"""

from .contract import ContractError, StageTasks, Wasmpipe
from .driver import Driver, StageFailed, StageSummary
from .main import run_pipeline

__all__ = ["ContractError", "Driver", "StageFailed", "StageSummary", "StageTasks", "Wasmpipe", "run_pipeline"]
