"""What a run leaves in MLflow: runs, parameters and metrics (tracking), the dataset as an
input (lineage), generators in the Model Registry (registry) and pictures (plots)."""
