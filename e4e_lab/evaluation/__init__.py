"""Several methods over the same pairs: ``evaluate.py`` runs and scores them (also under
``accelerate launch``), ``baselines.py`` holds Paint-by-Example, ``report.py`` writes the
CSV, the images and the HTML report."""
