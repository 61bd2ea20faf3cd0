"""What the shared lab server lets one person do, under one name for the views: `access.<name>` reads
from the module that holds each idea.

- ui.people: whose runs a person sees and changes (ownership, sharing, the claim of a started run);
- ui.links: `?run=<id>` links to runs, and the notice a private or missing run opens;
- ui.limits: the server's limits (engine.core.limits), refused with a message naming the limit;
- ui.jobs: a person's long jobs (jobs_per_person, disk quota: engine.core.jobs);
- ui.model_queue: their place in a model's queue;
- ui.memory_estimates: the memory a computation needs, refused before it starts.

Rules: a person owns the runs they start; they see, stop, delete and mark their own runs, shared runs
read-only, and runs made outside the server (no owner) read-only. A request over a server limit is
refused with a message naming the limit, never clamped in silence. The command line uses none of this.
"""

from __future__ import annotations

from engine.core.jobs import LARGEST_LISTED, folder_bytes
from ui.jobs import check_jobs, check_quota, is_my_job, start_job
from ui.limits import (
    check_prompt_count,
    check_prompt_tokens,
    limit_note,
    limits,
    over_limit,
    prompt_count_problem,
    prompt_lengths,
    refuse_over,
    token_count,
)
from ui.links import LINK_PARAM, PRIVATE_NOTICE, follow_link, linked_run_id, readable_or_notice, set_link
from ui.memory_estimates import (
    ACTIVATION_COPIES,
    DTYPE_BYTES,
    ModelShape,
    activation_bytes,
    attention_forward_bytes,
    attention_maps_bytes,
    ensure_memory,
    head_functions_bytes,
    model_shape,
    scan_bytes,
)
from ui.model_queue import QUEUE_POLL_SECONDS, busy_text, job_queue_note, ordinal, queue_notice
from ui.people import (
    access_of,
    can_read,
    can_write,
    claim_started_run,
    deletable_strays,
    forget_deleted,
    me,
    owner_label,
    readable,
    share_toggle,
)

__all__ = [
    "ACTIVATION_COPIES",
    "DTYPE_BYTES",
    "LARGEST_LISTED",
    "LINK_PARAM",
    "PRIVATE_NOTICE",
    "QUEUE_POLL_SECONDS",
    "ModelShape",
    "access_of",
    "activation_bytes",
    "attention_forward_bytes",
    "attention_maps_bytes",
    "busy_text",
    "can_read",
    "can_write",
    "check_jobs",
    "check_prompt_count",
    "check_prompt_tokens",
    "check_quota",
    "claim_started_run",
    "deletable_strays",
    "ensure_memory",
    "folder_bytes",
    "follow_link",
    "forget_deleted",
    "head_functions_bytes",
    "is_my_job",
    "job_queue_note",
    "limit_note",
    "limits",
    "linked_run_id",
    "me",
    "model_shape",
    "ordinal",
    "over_limit",
    "owner_label",
    "prompt_count_problem",
    "prompt_lengths",
    "queue_notice",
    "readable",
    "readable_or_notice",
    "refuse_over",
    "scan_bytes",
    "set_link",
    "share_toggle",
    "start_job",
    "token_count",
]
