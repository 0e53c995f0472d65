"""Plumbing with no reinforcement learning in it.

    atomic.py        atomic folder and JSON writes (a crash leaves the old version or the new one; recover_dir
                     finishes or rolls back a replacement a killed writer left, and removes its leftovers)
    update.py        UpdateStep: one optimizer step over micro-batches (global normalisation, clipping, NaN guard)
    distributed.py   Distributed: data parallelism over accelerate / torchrun, a single-process stand-in without one
    attention.py     which attention kernels run: the enabled set, a reusable context that sets it (bf16 on
                     CPU, gradient checkpointing's recomputation)
    memory.py        PeakMemory: a block's peak resident (and CUDA) memory, sampled, for per-stage figures
    allocator.py     keep_freed_memory: glibc keeps freed large blocks for reuse (the `llm-gym` command applies it)
    logger.py        Logger: the one logger passed to every component, over TensorBoard's writer
    configio.py      config dataclasses <-> TOML/JSON, strict, with dotted paths and "did you mean"; check_finite
    runfolder.py     run-folder checks: a folder that cannot be written, a damaged state.json, named with the fix
    seeding.py       resolve_rng: a component's numpy Generator from `rng=` or `seed=` (SB3's habit)
"""
