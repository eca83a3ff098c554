"""VBench's temporal flickering: the formula lives in the core (``sdpo.rewards.temporal``), where the online
driver (``sdpo.online``) scores sampled videos with it; this name stays for ``eval/video_score.py`` and users."""

from sdpo.rewards.temporal import temporal_flickering

__all__ = ["temporal_flickering"]
