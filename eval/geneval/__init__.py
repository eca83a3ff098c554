"""GenEval (Ghosh et al., 2023): object-focused text-to-image alignment, the GenEval column of the paper's Table 6.

    python -m eval.geneval IMAGE_FOLDER [--batch_size 8] [--device cuda] [--model_root DIR]

IMAGE_FOLDER has the official layout (``<index:05d>/metadata.jsonl`` + ``<index:05d>/samples/<k>.png``),
which ``eval/generate.py --layout geneval`` writes. Modules:

- :mod:`eval.geneval.layout`   the folder layout and the metadata JSONL (read and written);
- :mod:`eval.geneval.rules`    the official decision rules on detections (pure, no model);
- :mod:`eval.geneval.detector` mmdetection's Mask2Former inference rebuilt on transformers;
- :mod:`eval.geneval.convert`  the official mmdetection checkpoint -> transformers weights;
- :mod:`eval.geneval.colors`   the zero-shot colour classifier on open_clip ViT-L/14;
- :mod:`eval.geneval.sources`  where both models' weights are found (model root, env vars, hub);
- :mod:`eval.geneval.evaluate` the batched, resumable pass and its outputs (also ``__main__``);
- :mod:`eval.geneval.tiny`     tiny random stand-ins of both models for tests.
"""
