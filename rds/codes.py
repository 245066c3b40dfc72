"""Status words and codes, as the JP1 manuals give them."""

from __future__ import annotations

# Job status at the managing server (rdsafind / dcmstat words), with JP1's host-status codes.
WAIT, EXEC, COMPLETE, ERROR = "WAIT", "EXEC", "COMPLETE", "ERROR"
EXEC_ERROR, LINE_DOWN, SETUP_ERROR = "EXEC-ERROR", "LINE-DOWN", "SETUP-ERROR"
JOB_STATUS_CODES = {WAIT: "10", EXEC: "20", ERROR: "30", EXEC_ERROR: "40", LINE_DOWN: "65",
                    COMPLETE: "90", SETUP_ERROR: "A0"}

# What a result reported upward may say.  The outcome of an install settles a
# job for good; the others may still be followed by it (a host that could not
# be started gets the job later by polling).
OUTCOMES = (COMPLETE, ERROR)
INTERIM = (EXEC_ERROR, LINE_DOWN, SETUP_ERROR)
# A destination withdrawn by the managing server before it began (dcmjbrm; an ID group it left):
# JP1's words, which its manuals give no host-status code.  Final, but for the destination's own
# outcome, which replaces it (the withdrawal came too late: rds.control).
DELETE, ID_INVALID = "DELETE", "ID-INVALID"
WITHDRAWN = (DELETE, ID_INVALID)
RESULT_STATUSES = OUTCOMES + INTERIM + WITHDRAWN
STATUS_WORDS = (*JOB_STATUS_CODES, *WITHDRAWN)  # dcmstat's columns, in this order
FAILED = (ERROR, EXEC_ERROR, LINE_DOWN, SETUP_ERROR)

# Distribution status at a relay (distribution situation file), with JP1's codes.
DELIVERY_STATUS_CODES = {
    "KEEPING": "10", "KEEP": "20", "KEEP_ERROR": "2f", "CLT_START": "30", "CLT_START_ERROR": "3f",
    "CLT_WAIT": "90", "INS_WAIT": "40", "GEN_START": "50", "COMPLETE": "60", "ERROR": "70",
    "SETUP_ERROR": "80",
}
