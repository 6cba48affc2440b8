"""The driver side of a run: what every step and sweep trial does before and after the
workers run (checks, Ray, the dataset, the MLflow run, fit, the result), written once
in :mod:`pipelines.driver.session`, and the names that let a run be continued."""
