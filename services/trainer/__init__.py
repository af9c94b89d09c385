"""The trainer: GRPO with the shared tool-call reward — verl on GPUs, a torch trainer on CPU.

Modules:
- ``job``           the entry point a Kubernetes Job runs (``python -m looptool.services.trainer.job``)
- ``server``        the gRPC ``Trainer`` service (``looptool serve trainer``); ``client`` talks to it
- ``runner``        one training run: validate → (no-op if done) → train → upload → ``result.json``
- ``grpo`` / ``sft``  the CPU trainer (hand-written torch GRPO; supervised warm start)
- ``checkpoints``   resumable checkpoints in object storage
- ``verl_backend``  verl config, launch, log parsing, FSDP → HF merge
"""
