"""Evaluation tools beyond Table 1, one concept per module: e.g. bootstrap confidence intervals for the tables
(``stats``) and an offline audio feature set with distribution and memorisation metrics (``features``)."""
