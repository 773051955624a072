"""Raw user-item interaction logs (JSON Lines under ``<input>/dt=YYYY-MM-DD/``) and the NCF sets."""
from __future__ import annotations

from pyspark.sql import types as T

EVENT_ID = "event_id"
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
EVENT_TIME = "event_time"
SESSION_ID = "session_id"

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
REQUIRED_FIELDS = (EVENT_ID, USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TIME)

# The input contract. Every field is read as a string so that a wrong JSON type (a number where an id
# belongs) is seen and quarantined with its reason instead of silently cast or nulled.
RAW_EVENT_SCHEMA = T.StructType(
    [
        T.StructField(EVENT_ID, T.StringType(), True),
        T.StructField(USER_ID, T.StringType(), True),
        T.StructField(ITEM_ID, T.StringType(), True),
        T.StructField(EVENT_TYPE, T.StringType(), True),
        T.StructField(EVENT_TIME, T.StringType(), True),
        T.StructField(SESSION_ID, T.StringType(), True),
    ]
)

USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
LABEL = "label"

# The contract of train/test rows that the NCF model reads through petastorm.
NCF_ROW_SCHEMA = T.StructType(
    [
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(LABEL, T.FloatType(), False),
    ]
)

# ---------------------------------------------------------------------------------------------------
# Preprocessing (jobs/preprocess_interactions.py): rejects, parsed events, positives and the id maps.

LINE = "line"
INPUT_FILE = "input_file"
REASON = "reason"
RUN_DATE = "run_date"
EVENT_TS = "event_ts"

# Reject reasons, in the order they are checked: a line gets the first that applies. The sample generator
# names its injected bad records with the same words.
REASON_INVALID_JSON = "invalid_json"
REASON_MISSING_FIELD = "missing_field"
REASON_NON_STRING_ID = "non_string_id"
REASON_EMPTY_FIELD = "empty_field"
REASON_UNKNOWN_EVENT_TYPE = "unknown_event_type"
REASON_BAD_EVENT_TIME = "bad_event_time"
REASON_FUTURE_EVENT_TIME = "future_event_time"
REJECT_REASONS = (
    REASON_INVALID_JSON,
    REASON_MISSING_FIELD,
    REASON_NON_STRING_ID,
    REASON_EMPTY_FIELD,
    REASON_UNKNOWN_EVENT_TYPE,
    REASON_BAD_EVENT_TIME,
    REASON_FUTURE_EVENT_TIME,
)
# Fields whose JSON token must be a string (session_id only when present).
ID_FIELDS = (EVENT_ID, USER_ID, ITEM_ID)
OPTIONAL_ID_FIELDS = (SESSION_ID,)

# ISO-8601 with an offset (Z or +hh:mm), optional fraction of up to 6 digits.
EVENT_TIME_FORMAT = "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]XXX"

# What a rejected line looks like under <output>/rejects/dt=<run date>/.
REJECT_SCHEMA = T.StructType(
    [
        T.StructField(LINE, T.StringType(), True),
        T.StructField(INPUT_FILE, T.StringType(), True),
        T.StructField(REASON, T.StringType(), False),
    ]
)

# A valid, de-duplicated event.
EVENT_SCHEMA = T.StructType(
    [
        T.StructField(EVENT_ID, T.StringType(), False),
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(EVENT_TS, T.TimestampType(), False),
    ]
)

EVENT_COUNT = "event_count"
FIRST_TS = "first_ts"
# One implicit-feedback positive per (user, item): timed by its latest event.
POSITIVE_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(EVENT_TS, T.TimestampType(), False),
        T.StructField(FIRST_TS, T.TimestampType(), False),
        T.StructField(EVENT_COUNT, T.LongType(), False),
    ]
)

FIRST_SEEN = "first_seen"
ADDED_RUN_DATE = "added_run_date"
# The id maps under <output>/index/{users,items}/: an index never changes meaning once written.
USER_INDEX_SCHEMA = T.StructType(
    [
        T.StructField(USER_ID, T.StringType(), False),
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(FIRST_SEEN, T.TimestampType(), True),
        T.StructField(ADDED_RUN_DATE, T.StringType(), True),
    ]
)
ITEM_INDEX_SCHEMA = T.StructType(
    [
        T.StructField(ITEM_ID, T.StringType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(FIRST_SEEN, T.TimestampType(), True),
        T.StructField(ADDED_RUN_DATE, T.StringType(), True),
    ]
)

SPLIT_LOO = "loo"
SPLIT_CHRONO = "chrono"
SPLITS = (SPLIT_LOO, SPLIT_CHRONO)
