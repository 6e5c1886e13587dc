"""Runs and publishing: reading a run folder without training (folder.py), the
provenance its weights carry (provenance.py), exporting them (export.py), their
validation curve (curve.py), the model cards (cards.py) and `magn weights publish`
(publish.py), which does all of it and scores the result."""
