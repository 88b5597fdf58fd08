"""Video-QA evaluation: datasets in the Video-LLaVA format, resumable runner, judges, metrics."""
