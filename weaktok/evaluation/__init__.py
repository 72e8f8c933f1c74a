"""Evaluation: Table 1 on generated audio and the tools beside it (docs/evaluation.md).

run.py        ``weaktok evaluate``: evaluate(), table1.json, table1.md and the plots
scoring.py    the exact L-Score of waveforms, clip features, the region each mode is scored on
collect.py    the training reference (the target) and the pass that makes and scores every set
bypass.py     the bypass ablation (chunk path cut vs intact) and the chunk statistics
table.py      Table 1 as a dict: targets, intervals, training seeds, baselines, distributions
markdown.py   table1.md
stats.py      bootstrap confidence intervals, pooled over training seeds
features.py   an offline audio feature set; Fréchet distance, KID, two-sample test, memorisation
rulers.py     what each exact L-Score term reads on signals with a known answer
              (``python -m weaktok.evaluation.rulers`` prints the tables)
"""
