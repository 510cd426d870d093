"""Training and evaluation of every task of the papers: ``train(config)``, ``evaluate(config)``.

    from glmha.engine import train, evaluate
    result = train("configs/restormer/deraining_csa.yaml", ["train.total_iters=20"], variant="smoke")
    table = evaluate("configs/restormer/deraining_csa.yaml", result.weights, variant="smoke")
    print(table.markdown)
"""
from .config import ConfigError, load_config
from .evaluate import EvalResult, evaluate
from .run_log import TrainingInterrupted
from .run_state import RunFolderError, latest_checkpoint
from .settings import TrainResult, TrainSettings, build_model
from .tasks import DATASET_TYPES, LOSSES, TASKS, build_dataset, get_task
from .trainer import train

__all__ = [
    "ConfigError",
    "DATASET_TYPES",
    "EvalResult",
    "LOSSES",
    "RunFolderError",
    "TASKS",
    "TrainResult",
    "TrainSettings",
    "TrainingInterrupted",
    "build_dataset",
    "build_model",
    "evaluate",
    "get_task",
    "latest_checkpoint",
    "load_config",
    "train",
]
