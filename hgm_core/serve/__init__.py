"""ZeroMQ serving of the pipeline (docs/architecture.md §5): wire protocol and schema, worker, broker and client.

Only the torch-free client API is imported here; `hgm_core.serve.worker` (which loads the pipeline)
and `hgm_core.serve.broker` are imported explicitly by whoever runs them.
"""

from hgm_core.serve.client import JobResult, WorkerCancelled, WorkerClient, WorkerError, WorkerTimeout, load_curve_client_keys

__all__ = ["JobResult", "WorkerCancelled", "WorkerClient", "WorkerError", "WorkerTimeout", "load_curve_client_keys"]
