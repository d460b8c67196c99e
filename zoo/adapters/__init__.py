"""Parameter-efficient adapters that wrap a frozen model, all built on the one adapter core ``zoo.layers.lora``.

``zoo.adapters.sara`` — SaRA sparse fine-tuning (``SaRAOptimizer(model, threshold=2e-3)``: the one-line change
that turns a training loop into SaRA fine-tuning); ``zoo.adapters.lora_formats`` — LoRA files of peft, diffusers and
kohya-ss read into the core (``import_lora``, converters for ``load_adapter_state_dict(convert=...)``) and our
low-rank deltas written as the diffusers file ``pipe.load_lora_weights`` reads (``save_diffusers_lora``).
Import submodules directly; importing this package is free.
"""
