"""Label vocabularies of the supported datasets (ids are positions in the tuples)."""

from __future__ import annotations

# Volleyball (Ibrahim et al. 2016): 8 group activities, 9 person actions.
VOLLEYBALL_ACTIVITIES = (
    "r_set", "r_spike", "r_pass", "r_winpoint",
    "l_set", "l_spike", "l_pass", "l_winpoint",
)
VOLLEYBALL_ACTIONS = (
    "blocking", "digging", "falling", "jumping", "moving",
    "setting", "spiking", "standing", "waiting",
)

# Collective Activity (Choi et al. 2009): person action ids 1..6 in the files.
CAD_ACTIONS = ("NA", "crossing", "waiting", "queueing", "walking", "talking")
CAD_ACTIVITIES_5 = ("crossing", "waiting", "queueing", "walking", "talking")
CAD_ACTIVITIES_4 = ("moving", "waiting", "queueing", "talking")  # crossing+walking merged

# Collective Activity Extended (Choi et al. 2011): adds dancing and jogging;
# walking is no longer a group activity.
CAED_ACTIONS = ("NA", "crossing", "waiting", "queueing", "walking", "talking", "dancing", "jogging")
CAED_ACTIVITIES = ("crossing", "waiting", "queueing", "talking", "dancing", "jogging")


def normalise_volleyball_label(label: str) -> str:
    """Fold the two spellings used in the official files (``r_set`` / ``r-set``)."""
    return label.strip().lower().replace("-", "_")
