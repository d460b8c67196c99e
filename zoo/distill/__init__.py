"""Dataset distillation building blocks, independent of any recipe (the ``hello_distill`` recipe wires
them to data and nested trainings):

* :mod:`zoo.distill.views` -- random-resized-crop views, a pure function of ``(seed, epoch, sample)``;
* :mod:`zoo.distill.logits` -- a frozen network's logits over chunks, in eval mode;
* :mod:`zoo.distill.images` -- RDED selection and stitching, the class-wise RDED / random sets, pixel optimisation on
  the teacher / projector gap;
* :mod:`zoo.distill.labels` -- the label kinds (hard, stored, stored_equal, projector) and FKD-style stored soft
  labels;
* :mod:`zoo.distill.students` -- what a student sees and learns from (:class:`StudentTeaching`: views + loss);
* :mod:`zoo.distill.rotation` -- the rotation pretext task that pre-trains the projector's encoder;
* :mod:`zoo.distill.projector` -- one training step's loss of HeLlO's projector against its teachers;
* :mod:`zoo.distill.storage` -- image sets and tensors in safetensors files, written atomically;
* :mod:`zoo.distill.data` -- the real data, and a fixed image set that yields sample indices;
* :mod:`zoo.distill.report` -- the results table and the figures (matplotlib, imported only when drawing);
* :mod:`zoo.distill.config` -- the settings of a distillation, one dataclass per config section;
* :mod:`zoo.distill.pipeline` -- the stages of a HeLlO distillation end to end (:class:`HelloPipeline`).
"""
from zoo.distill.data import IndexedImages, dataset_targets, image_dataset, stack_images
from zoo.distill.images import (image_objective, optimise_images, random_image_set, rded_image_set, rded_select,
                                stitch_patches)
from zoo.distill.labels import (LABEL_DTYPES, LABEL_KINDS, SOFT_LABEL_KINDS, epochs_within_bytes,
                                generate_soft_labels)
from zoo.distill.logits import batched_logits
from zoo.distill.projector import projector_training_loss
from zoo.distill.report import plot_results, save_image_grid, write_results_csv
from zoo.distill.rotation import random_rotations, rotate, rotation_hits
from zoo.distill.storage import (load_image_set, load_module_weights, load_tensors, save_image_set,
                                 save_module_weights, save_tensors)
from zoo.distill.students import StudentTeaching
from zoo.distill.views import apply_views, random_views, view_params

__all__ = ["view_params", "apply_views", "random_views", "batched_logits", "stitch_patches", "rded_select",
           "rded_image_set", "random_image_set", "image_objective", "optimise_images", "LABEL_KINDS", "LABEL_DTYPES",
           "SOFT_LABEL_KINDS", "generate_soft_labels", "epochs_within_bytes", "StudentTeaching", "rotate",
           "random_rotations", "rotation_hits", "projector_training_loss", "save_tensors", "load_tensors",
           "save_image_set", "load_image_set", "save_module_weights", "load_module_weights", "IndexedImages",
           "image_dataset", "dataset_targets", "stack_images", "write_results_csv", "save_image_grid",
           "plot_results"]
