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
