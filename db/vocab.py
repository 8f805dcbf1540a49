"""The words every layer shares: vote choices, roles, prompt splits, pair purposes.

Defined once here (the bottom layer) so no face or domain module retypes them.
"""

CHOICES = ("a", "b", "tie", "both_bad")  # on a pair of answers
THUMBS = ("up", "down")  # on a single answer (pairs.mode "single")
PAIR_MODES = ("pair", "single")
CONTINUATION = ("off", "same_annotator", "anyone")  # who writes a conversation's next user turn
ROLES = ("annotator", "maintainer")
SPLITS = ("train", "heldout")
PAIR_PURPOSES = ("train", "arena", "gold", "live")
SELECTIONS = ("random", "active")  # how the sampler chose a queued pair (pairs.selection, m006)
