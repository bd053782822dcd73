"""The job queue: one small interface (base.JobQueue), SQLite embedded by default, PostgreSQL to
share one queue between machines. `open_queue(url)` picks the backend from the URL."""
from stablekit.serve.queue.base import JobQueue, open_queue

__all__ = ["JobQueue", "open_queue"]
