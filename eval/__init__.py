"""Evaluation: generate images for prompt sets, score them with reward models, compare two models."""
