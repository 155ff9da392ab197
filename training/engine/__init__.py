"""One training engine for stage 0 (``training/pretrain_backbone.py``) and stage 1 (``training/train.py``).

Small modules with one job each, after open_clip's own trainer (``open_clip_train``):

* ``config``: YAML + ``--set`` merging, the hashed settings a resumed run must share
* ``distributed``: one process per device (torchrun), DDP
* ``data_feed``: a split held as uint8 tensors, seeded epoch orders, batch gathering
* ``schedule``: the warmup-cosine learning rate
* ``state``: atomic ``last/`` folders, the optimiser flattened to safetensors + JSON, RNG state
* ``recorder``: metrics CSV and TensorBoard
* ``loop``: the epoch loop, its progress bar, resume, and callbacks (``Callback``)

A stage is a ``loop.Task``: its model, its loss on one batch, its validation and what it saves.
"""
