"""Training: `fit` and everything a run needs.

loop.py        fit() and the epoch loop: checkpoints, logs, plots, stops on signals and NaN
trainer.py     Trainer: the run's model, data, optimiser and schedule, and one step of each kind
step.py        TrainStep / prepare_training: the one training step, shared with `bench`
writer.py      the background checkpoint writer and the CPU copy it writes from
start.py       start_trainer (a new run) and open_resume (--resume), checking everything first
setup.py       the data and its validation split, the model, the optimiser's parameter groups
state.py       Progress (where a run stands) and the process settings held during a run
optim.py       optimisers and the learning-rate schedule
run_folder.py  the run folder and the one place that writes it
signals.py     Ctrl-C / SIGTERM: finish the step, save, exit
distributed.py torchrun / DistributedDataParallel glue
"""
