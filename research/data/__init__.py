"""Task sources (built-in and user data), task transforms, and the tasks built from them."""

from research.data.batches import TensorBatches
from research.data.tasks import SHARED_HEAD, Task, TaskSet, build_tasks

__all__ = ["SHARED_HEAD", "Task", "TaskSet", "TensorBatches", "build_tasks"]
