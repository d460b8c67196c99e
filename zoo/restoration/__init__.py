"""Image restoration algorithms the ``restore`` recipe wires: tiled inference (:mod:`zoo.restoration.tiling`) and
the training losses (:mod:`zoo.restoration.losses`). Metrics are :mod:`zoo.metrics.image`, degradations and paired
datasets :mod:`zoo.data.images.degradations` / :mod:`zoo.data.images.paired`, CoLoRA :mod:`zoo.adapters.colora`."""
