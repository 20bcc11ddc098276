"""Using a trained model: evaluation (top-1/top-5, 10-crop, confusion matrix), prediction on images, the metrics
they share and the pictures they draw.

    evaluation.py  evaluate() and the evaluation loop training reuses for validation
    prediction.py  predict(): top-k classes of image files
    metrics.py     top-k accuracy and the confusion matrix, kept as sums (exact under torchrun)
    plots.py       curves, confusion matrix, image grids (matplotlib, no display needed)
"""
