"""The reward models moved into the core (``sdpo.rewards``: validation while training and the online rounds
score with them too); ``python -m eval.rewards.tiny`` keeps working."""
