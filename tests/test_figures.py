"""Every figure the zoo writes is readable on its own: rendered on tiny data, written as a PNG of a readable size,
with its title and its labels (read from the figure object, as a reader reads the image)."""
from __future__ import annotations

import torch
from PIL import Image

from zoo.plotting import figure_texts, image_grid, save_figure


def _png_size(path):
    with Image.open(path) as im:
        return im.size


def test_image_grid_labels_rows_and_columns_without_cutting_them(tmp_path):
    images = [[torch.rand(3, 8, 8) for _ in range(3)] for _ in range(2)]
    prompts = ["a handwritten digit seven in brick style", "a digit"]
    fig = image_grid(images, row_labels=prompts, col_labels=["base", "LoRA", "SaRA"], title="Samples",
                     caption="rows: prompt, columns: method")
    texts = " ".join(figure_texts(fig)).replace("\n", " ")
    for want in ("a handwritten digit seven in brick style", "LoRA", "SaRA", "Samples", "rows: prompt"):
        assert want in texts
    w, h = _png_size(save_figure(fig, tmp_path / "grid.png"))
    assert w >= 400 and h >= 250


def test_confusion_matrix_figure_has_title_axes_and_colour_bar(tmp_path):
    from zoo.metrics.classification import confusion_figure, save_confusion_matrix

    cm = torch.tensor([[5, 1], [2, 7]])
    texts = figure_texts(confusion_figure(cm, ["cat", "dog"]))
    assert "predicted class" in texts and "true class" in texts and any("% correct" in t for t in texts)
    assert "share of the true class" in texts and "cat" in texts and "dog" in texts
    paths = save_confusion_matrix(cm, ["cat", "dog"], tmp_path)
    w, h = _png_size(paths[-1])
    assert w >= 400 and h >= 400


def test_part_segmentation_figure_has_titles_and_a_part_legend(tmp_path):
    from zoo.metrics.segmentation import part_figure, save_part_figure

    g = torch.Generator().manual_seed(0)
    shapes = []
    for cat in (0, 1):  # Airplane (parts 0-3), Bag (parts 4-5)
        parts = (0, 1, 2, 3) if cat == 0 else (4, 5)
        truth = torch.tensor(parts)[torch.randint(len(parts), (64,), generator=g)]
        shapes.append((torch.randn(64, 3, generator=g), cat, truth, truth.clone()))
    names = ["Airplane", "Bag"]
    texts = figure_texts(part_figure(shapes, names))
    assert "Airplane: ground truth" in texts and "Bag: ground truth" in texts
    assert any(t.startswith("prediction (IoU 100.0 %") for t in texts)
    assert {"part 0", "part 3", "part 4", "part 5"} <= set(texts)
    assert any("Part segmentation" in t for t in texts)
    w, h = _png_size(save_part_figure(shapes, names, tmp_path / "parts.png"))
    assert w >= 800 and h >= 300
