#!/usr/bin/env python3
"""Render prompts with and without an adapter side by side into one PNG.

    python tools/sample.py --pipeline PATH --adapter runs/style/sara_weights.safetensors \
        --prompts "Barbie style, a dog" "Barbie style, a house" --output grid.png [--steps 25 --guidance 7.5 --seed 0]

``--pipeline``: a diffusers folder (Stable Diffusion or SDXL, from its model_index.json) or a single .safetensors/.ckpt
file (with ``--single-file-config DIR`` offline).
``--adapter``: SaRA weights (``sara_weights.safetensors``), a diffusers LoRA (``pytorch_lora_weights.safetensors``),
a fine-tuned UNet folder, a folder an adapter method's ``save`` wrote (``adapter_config.json``), or a run directory
holding one of them. ``--kind`` names the method when detection is not wanted: every registered method of
``zoo.adapters`` (``zoo.adapters.base.adapter_names()``) loads into a pipeline. Rows: prompts; columns: base | adapter.
"""
import sys

from zoo.diffusion.sampling import sample_main

if __name__ == "__main__":
    sys.exit(sample_main())
