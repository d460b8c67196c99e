"""Dataset distillation building blocks, independent of any recipe (the ``hello_distill`` recipe in
:mod:`zoo.recipes.distill` chains them):

* :mod:`zoo.distill.views` -- random-resized-crop views, a pure function of ``(seed, epoch, sample)``;
* :mod:`zoo.distill.logits` -- a frozen network's logits over chunks, in eval mode;
* :mod:`zoo.distill.images` -- RDED selection and stitching, pixel optimisation on the teacher / projector gap;
* :mod:`zoo.distill.labels` -- the label kinds (hard, stored, projector) and FKD-style stored soft labels;
* :mod:`zoo.distill.storage` -- image sets and tensors in safetensors files, written atomically;
* :mod:`zoo.distill.data` -- the real data, and a fixed image set that yields sample indices;
* :mod:`zoo.distill.report` -- the figures (matplotlib, imported only when drawing).
"""
from zoo.distill.data import IndexedImages, dataset_targets, image_dataset, stack_images
from zoo.distill.images import image_objective, optimise_images, rded_select, stitch_patches
from zoo.distill.labels import LABEL_DTYPES, LABEL_KINDS, generate_soft_labels
from zoo.distill.logits import batched_logits
from zoo.distill.report import plot_results, save_image_grid
from zoo.distill.storage import load_image_set, save_image_set, save_tensors
from zoo.distill.views import apply_views, random_views, view_params

__all__ = ["view_params", "apply_views", "random_views", "batched_logits", "stitch_patches", "rded_select",
           "image_objective", "optimise_images", "LABEL_KINDS", "LABEL_DTYPES", "generate_soft_labels",
           "save_tensors", "save_image_set", "load_image_set", "IndexedImages", "image_dataset", "dataset_targets",
           "stack_images", "save_image_grid", "plot_results"]
