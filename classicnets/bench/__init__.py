"""`classicnets bench`: how fast a model runs here, and how close that is to what the machine can do.

settings.py     BenchConfig: what to time
flops.py        FLOPs of a forward pass and a training step, counted on the meta device
steps.py        the default path (the Trainer's step) and the plain-PyTorch baseline, and one step of each
timing.py       warm-up, interleaved candidates, mean ± sd
peaks.py        the machine's peak (torch.mm or oneDNN's 1x1 convolution, the faster), before, between and after
onnx_compare.py batch-1 inference against onnxruntime on our ONNX export
data_feed.py    the step fed by the Trainer's data loader
report.py       the figures as a table, JSON or CSV
run.py          run_bench: all of the above for each batch size and mode
"""
