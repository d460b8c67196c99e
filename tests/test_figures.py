"""Every figure the zoo writes is readable on its own: rendered on tiny data, written as a PNG of a readable size,
with its title and its labels (read from the figure object, as a reader reads the image)."""
from __future__ import annotations

import pytest
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
    from zoo.plotting import clipped_texts

    fig = confusion_figure(cm, ["cat", "dog"])
    texts = figure_texts(fig)
    assert clipped_texts(fig) == []
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
    from zoo.plotting import clipped_texts

    fig = part_figure(shapes, names)
    texts = figure_texts(fig)
    assert clipped_texts(fig) == []
    assert "Airplane: ground truth" in texts and "Bag: ground truth" in texts
    assert any(t.startswith("prediction (IoU 100.0 %") for t in texts)
    assert {"part 0", "part 3", "part 4", "part 5"} <= set(texts)
    assert any("Part segmentation" in t for t in texts)
    w, h = _png_size(save_part_figure(shapes, names, tmp_path / "parts.png"))
    assert w >= 800 and h >= 300


def test_stream_errors_figure_names_domains_axes_and_the_mean(tmp_path):
    from zoo.metrics.stream import errors_figure, save_domain_errors

    errors = {"gaussian_noise": 32.2, "shot_noise": 3.65, "fog": 88.6}
    from zoo.plotting import clipped_texts

    fig = errors_figure(errors, 41.48, title="vida (continual)")
    texts = figure_texts(fig)
    assert clipped_texts(fig) == []
    assert any(t.startswith("Online error per domain: vida (continual)") for t in texts)
    assert "online error (%), lower is better" in texts and "domain, in stream order" in texts
    assert {"gaussian noise", "shot noise", "fog", "32.2", "88.6"} <= set(texts)
    assert "mean over the stream: 41.48 %" in texts
    csv_path, png_path = save_domain_errors(errors, 41.48, tmp_path, title="vida (continual)")
    w, h = _png_size(png_path)
    assert w >= 600 and h >= 400
    assert csv_path.read_text().splitlines()[-1] == "mean,41.48"


def test_clipped_texts_finds_a_label_cut_at_the_edge():
    from zoo.plotting import clipped_texts, pyplot

    fig = pyplot().figure(figsize=(3, 2))
    fig.text(0.5, 0.5, "inside")
    fig.text(-0.2, 0.5, "cut on the left")
    assert clipped_texts(fig) == ["cut on the left"]
    pyplot().close(fig)


def test_image_grid_keeps_every_label_inside_and_marks_column_groups(tmp_path):
    from zoo.plotting import clipped_texts

    images = [[torch.rand(3, 8, 8) for _ in range(4)] for _ in range(2)]
    rows = ["a handwritten digit seven in brick style with a very long prompt that wraps", "sara"]
    fig = image_grid(images, row_labels=rows, col_labels=["0", "1", "0", "1"],
                     col_groups=[("style prompt", 2), ("plain prompt", 2)], title="Style fine-tuning")
    texts = figure_texts(fig)
    assert "style prompt" in texts and "plain prompt" in texts and "Style fine-tuning" in texts
    assert "a handwritten digit seven in brick style with a very long prompt that wraps" in " ".join(
        texts).replace("\n", " ")
    assert clipped_texts(fig) == []
    with pytest.raises(ValueError, match="col_groups cover 3 columns, the grid has 4"):
        image_grid(images, col_groups=[("a", 1), ("b", 2)])


def test_image_grid_of_one_small_image_keeps_a_long_title_and_caption_inside():
    from zoo.plotting import clipped_texts

    fig = image_grid([[torch.rand(3, 4, 4)]], title="A title much wider than one small image could ever be",
                     caption="a caption that is also far wider than the single cell of this grid, so it wraps")
    assert clipped_texts(fig) == []


def test_sample_grid_wraps_long_prompts_instead_of_cutting_them(monkeypatch):
    """make_grid (tools/sample.py, zoo sample, the style and B4M grids) labels every row with the whole prompt."""
    import zoo.plotting
    from zoo.diffusion.sampling import make_grid

    seen = {}
    real = zoo.plotting.image_grid

    def spy(*args, **kwargs):
        seen["fig"] = fig = real(*args, **kwargs)
        seen["clipped"] = zoo.plotting.clipped_texts(fig)
        seen["texts"] = " ".join(figure_texts(fig)).replace("\n", " ")
        return fig

    monkeypatch.setattr(zoo.plotting, "image_grid", spy)
    tile = Image.new("RGB", (16, 16), "white")
    prompts = ["a handwritten digit seven in the style of a brick wall", "a snq teddybear in w@z style"]
    grid = make_grid([[tile, tile], [tile, tile]], prompts, ["base", "adapter"], title="Samples, seed 0")
    for want in (*prompts, "base", "adapter", "Samples, seed 0"):
        assert want in seen["texts"]
    assert seen["clipped"] == []
    assert grid.mode == "RGB" and grid.size[0] >= 2 * 64 and grid.size[1] >= 2 * 64


def test_pareto_figure_names_axes_series_and_budgets(tmp_path):
    from zoo.nas.report import pareto_figure, plot_pareto
    from zoo.plotting import clipped_texts

    results = [{"budget": "0.8 MFLOPs", "mflops": 0.78, "top1_supernet": 97.1, "top1_scratch": 96.5},
               {"budget": "2 MFLOPs", "mflops": 1.9, "top1_supernet": 98.2, "top1_scratch": 98.0}]
    candidates = [{"mflops": 0.5 + 0.1 * i, "search_top1": 90.0 + i} for i in range(8)]
    fig = pareto_figure(results, candidates)
    texts = figure_texts(fig)
    assert "top-1 accuracy (%)" in texts and any(t.startswith("compute of the child (MFLOPs") for t in texts)
    assert any(t.startswith("searched child, supernet weights, no retraining") for t in texts)
    assert any(t.startswith("same architecture trained from scratch") for t in texts)
    assert "candidates scored in the search (8, search split)" in texts
    assert "budget 0.8 MFLOPs" in texts and any(t.startswith("Supernet search") for t in texts)
    assert clipped_texts(fig) == []
    plot_pareto(results, candidates, tmp_path / "pareto.png")
    assert _png_size(tmp_path / "pareto.png") == (720, 480)


def test_restoration_triptych_names_columns_and_reports_psnr(tmp_path):
    from zoo.plotting import clipped_texts
    from zoo.restoration.figures import save_triptych, triptych_figure

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 48, 64, generator=g)
    lq = (gt + 0.1 * torch.randn(3, 48, 64, generator=g)).clamp(0, 1)
    rows = [("McMaster/15", lq, gt, gt)]
    fig = triptych_figure(rows, method="CoLoRA")
    texts = figure_texts(fig)
    assert {"degraded input", "restored: CoLoRA", "ground truth"} <= set(texts)
    assert "Restoration: input | CoLoRA | ground truth" in texts
    label = next(t for t in texts if t.startswith("McMaster/15")).replace("\n", " ")
    assert "output inf dB" in label and "PSNR: input 2" in label  # a perfect output; noise sigma 0.1 is ~20 dB
    assert clipped_texts(fig) == []
    w, h = _png_size(save_triptych(rows, tmp_path / "t.png", method="CoLoRA"))
    assert w >= 500 and h >= 200
