"""The words every layer shares: vote choices, roles, prompt splits, pair purposes.

Defined once here (the bottom layer) so no face or domain module retypes them.
"""

CHOICES = ("a", "b", "tie", "both_bad")
ROLES = ("annotator", "maintainer")
SPLITS = ("train", "heldout")
PAIR_PURPOSES = ("train", "arena", "gold", "live")
