"""Training, evaluation and prediction over the models and data of this package."""
