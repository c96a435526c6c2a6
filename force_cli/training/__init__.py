"""Training a pruned network: one module per concern.

- ``settings``: defaults per dataset, optimizers, learning-rate schedules;
- ``masking``: keeping the pruned weights at exactly zero;
- ``order``: the seeded, resumable, rank-sharded order of the training samples;
- ``state``: optimizer state as tensors + JSON, and the stop flag that signals set;
- ``compiled``: ``--compile``: torch.compile of the model for full batches (CUDA graphs on a GPU),
  with its fallbacks;
- ``ddp``: under torchrun, the DDP set-up (``--sync-bn``), the step all ranks stop after, and each
  rank's random stream;
- ``loop``: one epoch, and the ``Trainer`` that runs epochs, evaluates and saves partials;
- ``job``: a pruned checkpoint in, a trained checkpoint out (``force train``).

Nothing is imported here, so that ``evaluation`` and ``pruning`` can read ``settings`` without
loading the trainer.
"""
