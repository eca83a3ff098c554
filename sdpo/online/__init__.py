"""Iterative on-policy preference training (the IPO protocol of the SIPO paper's Appendix F.2), for every family.

    python -m sdpo.online --out DIR --rounds R --prompts FILE --samples_per_prompt K
        --steps_per_round S --reward NAME [--heldout_prompts FILE --heldout_reward NAME] [train.py flags]

Each round samples K images (or videos) of every prompt from the current weights, scores them with a fixed
reward, builds best-vs-worst pairs as a normal pair dataset, trains train.py's objective on them starting from
the previous round's weights, and evaluates on held-out prompts with another reward.  Modules: ``options``
(flags, configuration), ``layout`` (the run folder), ``plan`` (prompts, seeds, calls), ``media`` (image vs
video), ``rewards``, ``stats``; one module per stage (``sample``, ``score``, ``pairs``, ``train_round``,
``evaluate``), ``algorithms`` (which stages a round runs), ``rounds`` (the driver), ``divergence``.
See docs/online.md.
"""
