"""Parameter-efficient adapters that wrap a frozen model, all built on the one adapter core ``zoo.layers.lora``.

``zoo.adapters.sara`` — SaRA sparse fine-tuning (``SaRAOptimizer(model, threshold=2e-3)``: the one-line change
that turns a training loop into SaRA fine-tuning). Import submodules directly; importing this package is free.
"""
