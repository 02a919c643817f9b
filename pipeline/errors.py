"""The errors a job can end with.

    JobError                 a job ended without an article; `code` is the contract's code
    ├── LLMError             the provider failed (llm_auth, llm_rate_limited, ...)
    │   └── LLMStreamBroken  a streamed reply broke off midway; the call may be tried again
    └── BadOutline           the outline never parsed or validated (bad_outline)

Messages are for clients: one sentence on what happened, never a key or token.
"""

from __future__ import annotations


class JobError(Exception):
    """A job failed; `code` is one of the contract's job error codes."""

    code = "job_error"

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
