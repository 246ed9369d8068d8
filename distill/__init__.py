"""Student side: task data, dataset-level extraction, training, evaluation and overlap analysis."""
