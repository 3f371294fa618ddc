"""Every activity timeout and retry policy Keel uses, named in one place."""

from datetime import timedelta

from temporalio.common import RetryPolicy

STORE_TIMEOUT = timedelta(seconds=30)
STORE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=10,
    non_retryable_error_types=["UnknownAgent", "ValueError"],
)

NOTIFY_TIMEOUT = timedelta(seconds=30)
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=20,
    non_retryable_error_types=["UnknownUser"],
)

# A Claude call streams; heartbeats show it is alive, so a lost worker is noticed within
# the heartbeat timeout. Its clock starts when the server hands the call to the worker, not
# when the call's code first runs: on a saturated worker, calls waited 8 s (median) and up
# to 32 s between the two (bench/README.md, Concurrency); at 20 s, 6-11% of them timed
# out unstarted and went to Claude again.
LLM_TIMEOUT = timedelta(minutes=10)
LLM_HEARTBEAT_TIMEOUT = timedelta(seconds=60)
LLM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
)


def tool_retry(max_attempts: int) -> RetryPolicy:
    """A tool's retry policy, bounded by the attempts its registration allows."""
    return RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=max_attempts,
    )


# A Telegram send; Telegram's own `retry_after` (flood control) overrides the interval.
TELEGRAM_TIMEOUT = timedelta(seconds=30)
TELEGRAM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=12,
    non_retryable_error_types=["TelegramRejected"],
)

# Posting a scheduled message into a session (an update-with-start of its workflow).
SESSION_POST_TIMEOUT = timedelta(seconds=30)
SESSION_POST_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=["SessionNotFound", "ValueError"],
)

# Housekeeping: settling tasks whose workflow ended outside Keel (a visibility query and a
# write per task) and pruning old rows in batches. The next run of its schedule tries
# again, so a few attempts are enough.
HOUSEKEEPING_TIMEOUT = timedelta(minutes=2)
HOUSEKEEPING_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
)
