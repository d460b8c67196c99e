"""Test-time adaptation (TTA) algorithms: a source model adapted online on an unlabelled test stream.

One file per algorithm (its config class and its ``@register_tta`` class): ``source``, ``bn_adapt``, ``tent``,
``cotta``, ``vida``; :mod:`zoo.tta.base` holds the interface and the registry, :mod:`zoo.tta.augment` the CoTTA /
ViDA test-time augmentation, :mod:`zoo.tta.teacher` the EMA teacher and stochastic restore, :mod:`zoo.tta.norm` the
normalisation-layer helpers, :mod:`zoo.tta.stream` the stream itself (protocols, domains, the summary over them);
the ``ctta`` recipe runs the algorithms over it.
Import submodules directly; importing this package is free.
"""
