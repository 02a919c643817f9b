"""Every error the service raises has one root, `ArticleStreamError`:

    ArticleStreamError
    ├── JobError                 a job ended without an article; `code` is the contract's code
    │   ├── LLMError             the provider failed (llm_auth, llm_rate_limited, ...)
    │   │   └── LLMStreamBroken  a streamed reply broke off midway; the call may be tried again
    │   └── BadOutline           the outline never parsed or validated (bad_outline)
    ├── Refused                  the runner will not take this request now
    │   ├── QueueFull            more jobs wait than MAX_QUEUED_JOBS allows
    │   ├── ShuttingDown         the service is draining
    │   ├── KeyTaken             another request took the Idempotency-Key first
    │   └── NotCancellable       the job already succeeded or failed
    ├── StoreUnavailable         the shared store (Redis) cannot be reached now
    ├── LeaseLost                another instance has taken over a job this one was running
    ├── TransitionError          a job state change its status does not allow (a bug)
    ├── SettingsError            an environment variable the service cannot use (settings.py)
    ├── FrameError               a value no SSE frame can carry (sse.py)
    └── ApiError                 a request that gets a JSON error response (api/errors.py)

Job error messages are for clients: one sentence on what happened, never a key or token.
"""

from __future__ import annotations


class ArticleStreamError(Exception):
    """The root of every error the service raises."""


class JobError(ArticleStreamError):
    """A job failed; `code` is one of the contract's job error codes."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class LLMError(JobError):
    """The LLM provider failed, after its own retries."""

    code = "llm_error"


class LLMStreamBroken(LLMError):
    """A streamed reply broke off after some text; the call can be tried again."""


class BadOutline(JobError):
    """The model's outline was not YAML with a valid `sections:` list."""

    code = "bad_outline"


class Refused(ArticleStreamError):
    """The runner will not take this request now."""


class QueueFull(Refused):
    """More jobs are waiting than MAX_QUEUED_JOBS allows."""


class ShuttingDown(Refused):
    """The service is draining and takes no new jobs."""


class KeyTaken(Refused):
    """Another request made a job with this Idempotency-Key first; `job_id` is that job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class NotCancellable(Refused):
    """The job already succeeded or failed."""


class TransitionError(ArticleStreamError, RuntimeError):
    """A state change that the job's current status does not allow."""


class StoreUnavailable(ArticleStreamError):
    """The shared store (Redis) cannot be reached, or did not answer in time."""


class LeaseLost(ArticleStreamError):
    """Another instance has taken over this job; this one must let it go without a word."""
