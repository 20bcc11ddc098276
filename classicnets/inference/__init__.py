"""Using a trained model: evaluation (top-1/top-5, 10-crop, confusion matrix), prediction on images, the metrics
they share, the pictures they draw, and seeing inside the model (kernels, feature maps, Grad-CAM, neighbours, the
run report).

    evaluation.py    evaluate() and the evaluation loop training reuses for validation
    prediction.py    predict(): top-k classes of image files (with predict(gradcam=True), their heat maps)
    metrics.py       top-k accuracy and the confusion matrix, kept as sums (exact under torchrun)
    plots.py         curves, confusion matrix, image grids (matplotlib, no display needed)
    explain.py       show_filters / show_activations / show_gradcam / show_neighbours (`classicnets show`)
    layers.py        finding layers by the paper's or the module's name, in forward order, with their outputs
    filters.py       kernels as contrast-stretched tiles, in the groups the next layer reads (the paper's Fig. 3)
    activations.py   the feature maps of chosen layers for one image
    gradcam.py       Grad-CAM (Selvaraju et al. 2017)
    neighbours.py    features of a data set (cached), nearest neighbours by Euclidean distance (the paper's Fig. 4)
    explain_plots.py the pictures of `show`
    report.py        write_report(): report.html of a run folder; report_html.py draws the page
"""
