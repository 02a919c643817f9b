"""The words of the HTTP and SSE contract (`shared/CONTRACT.md`), defined once.

The runner, the routes, the OpenAPI document, the locustfile and the benches import them
from here, so a status, a stage, an event name or a limit cannot drift between them.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal


class JobStatus(str, Enum):
    #: waiting for a free runner, first in first out
    queued = "queued"
    #: the workflow is running
    running = "running"
    #: the article is written
    succeeded = "succeeded"
    #: the job ended with an error code
    failed = "failed"
    #: a client asked it to stop
    cancelled = "cancelled"


class Stage(str, Enum):
    #: not started yet
    queued = "queued"
    #: planning the outline
    outline = "outline"
    #: writing the sections
    content = "content"
    #: rewriting the draft in the house style
    style = "style"
    #: the article is finished
    done = "done"


#: the stages a running job reports as it enters them
WorkStage = Literal[Stage.outline, Stage.content, Stage.style]
#: the stages that stream live text: a section's, then the styled article's
TextStage = Literal[Stage.content, Stage.style]

TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})

#: every event type a stream carries, in the order the contract lists them
EVENT_TYPES = ("status", "outline", "section", "progress", "delta", "done", "error", "cancelled")
#: exactly one of these ends every job's stream
TERMINAL_EVENTS = frozenset({"done", "error", "cancelled"})

#: a failed (or cancelled) job's `error.code`
JOB_ERROR_CODES = (
    "bad_outline", "llm_auth", "llm_rate_limited", "llm_overloaded", "llm_timeout",
    "llm_error", "timeout", "shutdown", "worker_lost", "internal_error", "cancelled",
)

#: `Prefer: wait=N` is capped at this many seconds
MAX_PREFER_WAIT_S = 60
#: the job list's page size, by default and at most
DEFAULT_PAGE = 20
MAX_PAGE = 100
#: seconds a client is asked to wait (`Retry-After`) when the service is full or stopping
RETRY_AFTER_S = 5
#: what a job id looks like: `j_`, on Fly without Redis the machine that holds the job and a
#: dot, then 22 URL-safe characters (128 bits of randomness)
JOB_ID_PATTERN = "^j_(?:[0-9a-z]{1,40}\\.)?[A-Za-z0-9_-]{22}$"
#: what a machine id may look like (Fly's are 14 lowercase hex digits)
MACHINE_ID_PATTERN = "^[0-9a-z]{1,40}$"
#: what a submit's `webhook_events_filter` may name, and what it gets when left out
WEBHOOK_EVENTS = ("start", "progress", "completed")
DEFAULT_WEBHOOK_EVENTS = ("completed",)
