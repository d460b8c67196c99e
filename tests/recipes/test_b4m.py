"""The b4m recipe (Break-for-Make) end to end on a tiny real-format Stable Diffusion: stage 1 content, stage 1
style, stage 2 merge as one pipeline, a sample grid per stage; MCP's routing of the two losses; AdamWr in stage 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "configs" / "b4m" / "pipeline_tiny.yaml"
TINY = REPO / "configs" / "b4m" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(folder: Path, caption: str, kind: str, n: int = 2, seed: int = 0) -> str:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a = np.full((16, 16, 3), 30, np.uint8)
        if kind == "glyph":  # a cross, in a few stroke widths (the "subject")
            w = 1 + i
            a[8 - w:8 + w, 2:14] = 230
            a[2:14, 8 - w:8 + w] = 230
        else:  # a texture: noisy stripes tinted by seed
            a[::2] = rng.integers(0, 255, (8, 16, 3))
            a[..., seed % 3] = 200
        Image.fromarray(a).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return str(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from zoo.diffusion.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("b4m")
    return {
        "model.pretrained": str(save_tiny_pipeline(root / "pipe")),
        "b4m.content_root": _folder(root / "content", "a sks glyph", "glyph"),
        "b4m.style_root": _folder(root / "style", "a dog in zzw style", "texture", seed=1),
        "b4m.style_aux_roots": f"[{_folder(root / 'aux_style', 'a cat in yyq style', 'texture', seed=2)}]",
        "b4m.content_aux_roots": f"[{_folder(root / 'aux_content', 'a photo of a box', 'glyph', seed=3)}]",
    }


def _overrides(data, **extra):
    return [f"{k}={v}" for k, v in {**data, **extra}.items()]


def _need_shared_mnist(split: str = "test[:10]"):
    """The shared MNIST split (``zoo.data.images.mnist.MNIST``); skips the test when the data is absent."""
    from zoo.data.images.mnist import MNIST

    try:
        return MNIST(split=split)
    except (FileNotFoundError, OSError):
        pytest.skip("no MNIST data in ../shared/data (or $ZOO_DATA)")


def _lora(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "pytorch_lora_weights.safetensors"))


@pytest.fixture(scope="module")
def pipeline_run(data, tmp_path_factory):
    from zoo.cli import train_main

    out = tmp_path_factory.mktemp("b4m_run") / "run"
    assert train_main([str(PIPELINE), *_overrides(data), "--output", str(out)]) == 0
    return out


def test_pipeline_content_style_merge_end_to_end(data, pipeline_run):
    from zoo.adapters.plp import PLPConfig, plp_deltas
    from zoo.cli import train_main

    out = pipeline_run
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["complete"] and set(summary["stages"]) == {"content", "style", "merge", "ziplora"}
    for stage in ("content", "style", "merge", "ziplora"):
        assert (out / stage / "samples.png").stat().st_size > 0
        assert (out / stage / "pytorch_lora_weights.safetensors").is_file()
    from PIL import Image

    grid = Image.open(out / "merge" / "samples.png")
    assert grid.size[0] > 16 and grid.size[1] > 16
    # the frozen PLP parts are the same in all three files (first out/2 rows of lora_B, first in/2 columns of lora_A)
    files = {s: _lora(out / s) for s in ("content", "style", "merge")}
    keys = sorted(files["content"])
    assert keys == sorted(files["merge"])
    for k in keys:
        half = files["content"][k].shape[0 if "lora_B" in k else 1] // 2
        pick = (lambda t: t[:half]) if "lora_B" in k else (lambda t: t[:, :half])
        assert torch.equal(pick(files["content"][k]), pick(files["style"][k])), k
        assert torch.equal(pick(files["content"][k]), pick(files["merge"][k])), k
    # MCP: in the content run both learnable halves moved (down: content loss, up: auxiliary style loss)
    from zoo.diffusion.tiny import build_tiny_pipeline

    fresh = build_tiny_pipeline().unet
    from zoo.adapters.plp import add_plp

    add_plp(fresh, PLPConfig(rank=4), name="init")
    init = plp_deltas(fresh, "init")
    some = next(k for k in keys if k.endswith("attn1.to_q.lora_A.weight"))
    path = some[len("unet."):-len(".lora_A.weight")]
    a, b = files["content"][some], files["content"][some.replace("lora_A", "lora_B")]
    assert not torch.equal(a[:, a.shape[1] // 2:], init[path].down)
    assert b[b.shape[0] // 2:].abs().sum() > 0  # up's learnable rows start at 0
    # the ZipLoRA baseline's file: rank r_c + r_s with the mergers folded in (they start at 1: the sum of the two)
    zip_ = _lora(out / "ziplora")
    assert zip_[some].shape[0] == 2 * a.shape[0]
    # running the pipeline again skips the finished stages
    assert train_main([str(PIPELINE), *_overrides(data), "--output", str(out)]) == 0


@pytest.mark.parametrize("routing", ["separate", "official"])
def test_stage_one_routes_each_loss_to_its_projection(data, routing):
    """separate (ours): each loss reaches its own projection; official: both losses reach both projections (as
    ICTMCG/Break-for-make's two optimisers on accumulated gradients); the two lrs are the same either way."""
    from zoo.cli import build_recipe
    from zoo.adapters.model import named_adapter_parameters

    for stage, main, aux in (("content", "down", "up"), ("style", "up", "down")):
        recipe, cfg, _ = build_recipe(str(TINY), _overrides(data, **{"b4m.stage": stage, "b4m.routing": routing}))
        model = recipe.build_model()
        train, _ = recipe.build_dataloaders()
        batch = next(iter(train))
        seen = []

        class Ctx:
            device = torch.device("cpu")

            def backward(self, loss):
                for _, p in named_adapter_parameters(model, ["plp"], trainable_only=False):
                    p.grad = None
                loss.backward()
                params = named_adapter_parameters(model, ["plp"], trainable_only=False)
                seen.append({n.rsplit(".", 1)[1] for n, p in params if p.grad is not None and p.grad.abs().sum() > 0})

        logs = recipe.train_step(model, batch, Ctx())
        assert seen == ([{main}, {aux}] if routing == "separate" else [{"down", "up"}] * 2), stage
        assert set(logs) == {"loss", "loss_main", "loss_aux"}
        opt = recipe.configure_optimizer(model, cfg.optim)
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs == {f"plp.{main}": cfg.optim.lr, f"plp.{aux}": cfg.b4m.aux_lr}
        assert all(p.requires_grad for _, p in named_adapter_parameters(model, ["plp"], trainable_only=False))


def test_merge_stage_loads_after_init_and_trains_with_adamwr(data, tmp_path):
    from zoo.adapters.adamwr import AdamWr
    from zoo.adapters.lora_formats import save_diffusers_lora
    from zoo.adapters.plp import PLPConfig, add_plp, plp_deltas
    from zoo.cli import build_recipe
    from zoo.diffusion.tiny import build_tiny_pipeline

    src = build_tiny_pipeline().unet
    add_plp(src, PLPConfig(rank=4), name="c")
    add_plp(src, PLPConfig(rank=4), name="s")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in ("c", "s"):
            for d in plp_deltas(src, n).values():
                d.down.copy_(torch.randn(d.down.shape, generator=g))
                d.up.copy_(torch.randn(d.up.shape, generator=g))
    save_diffusers_lora(src, tmp_path / "c", "c")
    save_diffusers_lora(src, tmp_path / "s", "s")
    merge = {"b4m.stage": "merge", "b4m.content_adapter": tmp_path / "c", "b4m.style_adapter": tmp_path / "s",
             "b4m.stage2_optimizer": "adamwr"}
    recipe, cfg, _ = build_recipe(str(TINY), _overrides(data, **merge))
    model = recipe.build_model()
    merged = plp_deltas(model, "plp")
    for path, d in plp_deltas(src, "c").items():
        assert torch.equal(merged[path].down, d.down), path  # the learned content columns survive (square q/k/v too)
        assert torch.equal(merged[path].up, plp_deltas(src, "s")[path].up), path
    assert isinstance(recipe.configure_optimizer(model, cfg.optim), AdamWr)
    with pytest.raises(Exception, match="content_adapter"):
        build_recipe(str(TINY), _overrides(data, **{"b4m.stage": "merge", "b4m.content_adapter": tmp_path / "none",
                                                   "b4m.style_adapter": tmp_path / "s"}))


def test_any_content_with_any_style_composes_into_a_grid(data, pipeline_run, tmp_path):
    from zoo.adapters.merge import COMPOSITIONS, compose, ziplora_to_lowrank
    from zoo.adapters.plp import PLPConfig, load_plp
    from zoo.diffusion.pipeline import load_pipeline
    from zoo.diffusion.sampling import composition_grid

    pipe = load_pipeline(data["model.pretrained"])
    pipe.set_progress_bar_config(disable=True)
    layers = load_plp(pipe.unet, pipeline_run / "content", name="content")  # the run's own adapter: section
    assert {layer.deltas["content"].rank for layer in layers.values()} == {4}
    load_plp(pipe.unet, pipeline_run / "style", PLPConfig(rank=4), name="style")
    rows = {"base": None}
    blocks = {"content": ["down_blocks.1"], "style": ["up_blocks.0"]}
    for composition in COMPOSITIONS:
        opts = {"blocks": blocks} if composition == "blora" else {}
        name = compose(pipe.unet, composition, "content", "style", weights=(1.0, 0.8), **opts)
        rows[composition] = ziplora_to_lowrank(pipe.unet, name) if composition == "ziplora" else name
    grid = composition_grid(pipe, rows, ["a sks glyph in zzw style", "a dog"], num_inference_steps=2,
                            guidance_scale=3.0, height=16, width=16)
    grid.save(tmp_path / "grid.png")
    assert grid.size[0] >= 2 * 16 and grid.size[1] >= len(rows) * 16
    assert set(rows) == {"base", *COMPOSITIONS}


# ------------------------------------------------------------------------------------------------ data of the real run
def test_glyph_variants_are_handwriting_like_and_reproducible(tmp_path):
    from zoo.data.images.glyphs import GLYPHS, build_glyph_set, render_glyph

    masks = [render_glyph("star", torch.Generator().manual_seed(s)) for s in range(4)]
    assert all(m.shape == (28, 28) and 0 <= m.min() and m.max() <= 1 for m in masks)
    assert all(0.05 < m.mean() < 0.4 for m in masks)  # strokes, not blobs or empty
    assert not torch.equal(masks[0], masks[1])  # variants differ
    assert torch.equal(masks[0], render_glyph("star", torch.Generator().manual_seed(0)))
    assert set(GLYPHS) >= {"star", "lambda"}
    with pytest.raises(ValueError, match="unknown glyph"):
        render_glyph("seven", torch.Generator())
    pytest.importorskip("skimage")
    out = build_glyph_set(tmp_path / "g", "star", num_images=3, style="brick")
    rows = [json.loads(r) for r in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a handwritten glyph sks in brick style"] * 3
    from PIL import Image

    assert Image.open(out / rows[0]["file_name"]).size == (32, 32)


def test_b4m_sets_from_the_shared_mnist(tmp_path):
    pytest.importorskip("skimage")
    _need_shared_mnist()
    from zoo.data.images.folder import find_captioned_images
    from zoo.data.images.glyphs import build_b4m_sets

    sets = build_b4m_sets(tmp_path, num_content=2, num_style=4, num_aux=2)
    for key in ("content", "content_eval", "style"):
        assert find_captioned_images(sets[key])
    assert len(sets["style_aux"]) == 2 and len(sets["content_aux"]) == 3
    # MCP's auxiliary subjects are new subjects with their own identifier (the official's "snq teapot / vase")
    caps = [[json.loads(r)["text"] for r in (d / "metadata.jsonl").read_text().splitlines()]
            for d in sets["content_aux"]]
    assert caps == [["a handwritten glyph snq asterisk"] * 2, ["a handwritten glyph snq lambda"] * 2,
                    ["a handwritten glyph snq hourglass"] * 2]
    digits = build_b4m_sets(tmp_path / "digits", num_content=2, num_style=4, num_aux=2, aux_content=[1])
    caps = [json.loads(r)["text"] for r in (digits["content_aux"][0] / "metadata.jsonl").read_text().splitlines()]
    assert caps == ["a handwritten digit one"] * 2  # a digit: a subject the base model already draws


def test_style_sets_on_black_keep_the_strokes_and_their_style(tmp_path):
    """background="black": the same textured strokes and captions as the style's own background, on black."""
    pytest.importorskip("skimage")
    import numpy as np
    from PIL import Image

    from zoo.data.images.style_digits import build_style_set

    grey = _need_shared_mnist("test[:8000]")
    own = build_style_set(tmp_path / "own", "brick", num_images=3, split="test[:8000]")
    black = build_style_set(tmp_path / "black", "brick", num_images=3, split="test[:8000]", background="black")
    assert (own / "metadata.jsonl").read_text() == (black / "metadata.jsonl").read_text()
    for k in range(3):
        a = np.asarray(Image.open(own / f"{k:03d}.png"), dtype=np.float64) / 255
        b = np.asarray(Image.open(black / f"{k:03d}.png"), dtype=np.float64) / 255
        idx = [i for i, t in enumerate(grey.targets.tolist()) if t == k][0]
        m = np.pad(grey.data[idx].numpy() / 255.0, 2)[..., None]
        assert np.abs(b[m[..., 0] == 0]).max() == 0  # background: black
        assert np.abs(a[m[..., 0] == 0] - np.array([0.95, 0.9, 0.75])).max() < 1 / 255 + 1e-9  # brick's cream
        # the same textured strokes: own = m·fg + (1 − m)·cream, black = m·fg (up to 8-bit rounding)
        assert np.abs(a - b - (1 - m) * np.array([0.95, 0.9, 0.75])).max() <= 1 / 255 + 1e-9
        on = m[..., 0] > 0.8
        assert on.sum() > 20 and b[on][:, 0].mean() > 2 * b[on][:, 2].mean()  # brick's red tint
    with pytest.raises(ValueError, match="background"):
        build_style_set(tmp_path / "x", "brick", num_images=1, background="white")


def test_joint_baseline_is_one_plain_lora_and_config_errors_name_the_key(data):
    from zoo.cli import build_recipe
    from zoo.adapters.plp import plp_deltas
    from zoo.config import ConfigError

    recipe, cfg, _ = build_recipe(str(TINY), _overrides(data, **{"b4m.stage": "joint", "adapter.frozen": 0.0,
                                                                  "data.root": data["b4m.content_root"]}))
    model = recipe.build_model()
    assert all(d.down_frozen is None and d.up_frozen is None for d in plp_deltas(model, "plp").values())
    opt = recipe.configure_optimizer(model, cfg.optim)
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 1
    with pytest.raises(ConfigError, match="data.root is required"):
        build_recipe(str(TINY), _overrides(data, **{"b4m.stage": "joint"}))
    with pytest.raises(ConfigError, match="b4m.stage must be one of"):
        build_recipe(str(TINY), _overrides(data, **{"b4m.stage": "both"}))
    with pytest.raises(ConfigError, match=r"b4m.style_aux_roots\[0\]"):
        build_recipe(str(TINY), _overrides(data, **{"b4m.style_aux_roots": "[/nonexistent/folder]"}))
    with pytest.raises(ConfigError, match="adapter.name must be 'plp'"):
        build_recipe(str(TINY), _overrides(data, adapter="{name: lora}"))
    with pytest.raises(ConfigError, match="'model.plp.rank' .*moved.*adapter.rank"):
        build_recipe(str(TINY), _overrides(data, **{"model.plp.rank": 4}))


def test_old_stage_one_runs_still_load(data, pipeline_run, tmp_path):
    """A stage-1 run directory (diffusers LoRA file) loads into the PLP method; b4m_eval reads the PLP settings
    of runs written before the adapter section (model.plp in their config.yaml)."""
    import shutil

    import yaml

    from zoo.adapters.base import build_adapter
    from zoo.adapters.plp import plp_deltas
    from zoo.cli import build_recipe
    from zoo.diffusion.pipeline import load_pipeline

    unet = build_adapter({"name": "plp", "rank": 4}).load(load_pipeline(data["model.pretrained"]).unet,
                                                          pipeline_run / "content")
    files = _lora(pipeline_run / "content")
    some = next(k for k in files if k.endswith("attn1.to_q.lora_B.weight"))
    path = some[len("unet."):-len(".lora_B.weight")]
    d = plp_deltas(unet, "plp")[path]
    assert d.up.requires_grad and torch.equal(d.up_weight().detach(), files[some])
    old = tmp_path / "old_content"
    shutil.copytree(pipeline_run / "content", old)
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["model"]["plp"] = cfg.pop("adapter")
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    recipe, _, _ = build_recipe(str(REPO / "configs" / "b4m" / "eval_t2i_mnist.yaml"), [
        f"eval.content_adapter={old}", f"eval.style_adapter={pipeline_run / 'style'}",
        f"eval.content_eval_root={data['b4m.content_root']}", f"eval.style_root={data['b4m.style_root']}"])
    from zoo.diffusion.b4m_eval import stage1_plp

    assert stage1_plp(recipe.cfg.adapter, recipe.cfg.eval.content_adapter)["rank"] == 4


def test_eval_stage_compares_every_composition(data, pipeline_run, tmp_path):
    from zoo.data.images.mnist import MNIST
    from zoo.metrics.generation import load_digit_classifier

    try:
        MNIST(split="test[9990:]")
        load_digit_classifier()
    except (FileNotFoundError, OSError):
        pytest.skip("needs the shared MNIST data and the shipped digit classifier")
    from zoo.cli import run_training

    out = tmp_path / "eval"
    run = pipeline_run
    summary = run_training(str(REPO / "configs" / "b4m" / "eval_t2i_mnist.yaml"), [
        f"model.pretrained={data['model.pretrained']}", f"eval.content_adapter={run / 'content'}",
        f"eval.style_adapter={run / 'style'}", f"eval.b4m_adapter={run / 'merge'}",
        f"eval.ziplora_adapter={run / 'ziplora'}",
        f"eval.content_eval_root={data['b4m.content_root']}", f"eval.style_root={data['b4m.style_root']}",
        "eval.num_seeds=1", "eval.digits=[1,2]", "eval.num_inference_steps=2", "eval.digit_split=test[9900:]",
        "eval.scales=[0.5]"], out)
    methods = summary["final"]["methods"]
    # the merge before stage 2 (the adapter section read from the content run's config.yaml), then the scaled rows
    assert list(methods) == ["base", "content", "style", "weighted_sum", "b4m_merge_only", "b4m", "ziplora",
                             "weighted_sum ×0.5", "b4m ×0.5"]
    assert methods["b4m ×0.5"]["scale"] == 0.5 and methods["b4m"]["scale"] == 1.0
    for r in methods.values():
        assert 0 <= r["content_fidelity"] <= 100 and 0 <= r["prompt_fidelity"] <= 100 and r["style_gram"] >= 0
    assert methods["base"]["style_gain"] == 0.0
    assert (out / "grid.png").stat().st_size > 0
    table = (out / "results.md").read_text()
    equal = summary["final"]["equal_fidelity"]
    assert [q["row"] for q in equal] == ["b4m", "b4m ×0.5"]
    assert table.count("\n| ") == 1 + len(methods) + 1 + len(equal)  # each table: header + one row per entry


def test_scores_compare_at_equal_prompt_fidelity():
    """The weighted sum's curve is read at B4M's prompt fidelities by linear interpolation, never extrapolated."""
    from zoo.diffusion.composition_eval import equal_fidelity_comparison, score_at_fidelity

    curve = [(20.0, 0.30), (60.0, 0.10), (90.0, 0.02)]
    assert score_at_fidelity(curve, 40.0) == pytest.approx(0.20)
    assert score_at_fidelity(curve, 75.0) == pytest.approx(0.06)
    assert score_at_fidelity(curve, 90.0) == pytest.approx(0.02)
    assert score_at_fidelity(curve, 95.0) is None and score_at_fidelity(curve, 10.0) is None
    assert score_at_fidelity([(50.0, 0.1), (50.0, 0.3)], 50.0) == 0.3
    results = {"base": {"prompt_fidelity": 100.0, "score": 0.0},
               "weighted_sum": {"prompt_fidelity": 20.0, "score": 0.30},
               "weighted_sum ×0.5": {"prompt_fidelity": 60.0, "score": 0.10},
               "b4m": {"prompt_fidelity": 40.0, "score": 0.25},
               "b4m ×0.5": {"prompt_fidelity": 80.0, "score": 0.05}}
    rows = equal_fidelity_comparison(results, "b4m", "weighted_sum")
    assert [r["row"] for r in rows] == ["b4m", "b4m ×0.5"]
    assert rows[0]["baseline_score"] == pytest.approx(0.20) and rows[1]["baseline_score"] is None


# ------------------------------------------------------------------------------------------------ the study's stages
@pytest.mark.parametrize("name", ["adamw", "adamwr"])
def test_stage_two_optimiser_is_a_choice_and_snapshots_every_n_steps(data, pipeline_run, tmp_path, name):
    """b4m.stage2_optimizer: adamw (the official's effective stage 2: AdamW on up and down) or adamwr (AdamWr alone);
    b4m.snapshot_every writes the adapter after every N optimiser steps, the last step being the run's own file."""
    from zoo.adapters.adamwr import AdamWr
    from zoo.cli import build_recipe, run_training
    from zoo.diffusion.b4m_study import merge_snapshots

    merge = {"b4m.stage": "merge", "b4m.content_adapter": pipeline_run / "content",
             "b4m.style_adapter": pipeline_run / "style", "b4m.stage2_optimizer": name}
    recipe, cfg, _ = build_recipe(str(TINY), _overrides(data, **merge))
    model = recipe.build_model()
    opt = recipe.configure_optimizer(model, cfg.optim)
    assert isinstance(opt, AdamWr) == (name == "adamwr") and isinstance(opt, torch.optim.AdamW) == (name == "adamw")
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert {id(p) for p in model.parameters() if p.requires_grad} == trained  # up and down, nothing else
    run = tmp_path / "merge"
    run_training(str(TINY), _overrides(data, **merge, **{"b4m.snapshot_every": 1, "trainer.max_steps": 3,
                                                          "sample.enabled": False}), run)
    snaps = merge_snapshots(run)
    assert list(snaps) == [1, 2, 3] and snaps[3] == run / "pytorch_lora_weights.safetensors"
    files = [_lora(p.parent) for p in snaps.values()]
    key = next(k for k in files[0] if "lora_B" in k)
    assert not torch.equal(files[0][key], files[2][key])  # the adapter moved between snapshots
    with pytest.raises(Exception, match="stage2_optimizer"):
        build_recipe(str(TINY), _overrides(data, **{**merge, "b4m.stage2_optimizer": "sgd"}))


def test_curve_at_reads_equal_prompt_fidelity_with_per_image_scores():
    import numpy as np

    from zoo.diffusion.composition_eval import curve_at

    ids = np.arange(4)
    base = ({"prompt_fidelity": 100.0, "score": 0.0}, {"content_fidelity": np.zeros(4), "example_id": ids})
    half = ({"prompt_fidelity": 90.0, "score": 0.1},
            {"content_fidelity": np.array([100.0, 0, 0, 0]), "example_id": ids})
    full = ({"prompt_fidelity": 50.0, "score": 0.5}, {"content_fidelity": np.array([100.0, 100, 100, 0]),
                                                     "example_id": ids})
    points = [(1.0, *full), (0.0, *base), (0.5, *half)]
    at = curve_at(points, 80.0)
    assert at["reached"] == 1.0 and at["scale"] == pytest.approx(0.5 + 0.25 * 0.5)
    assert at["metrics"]["score"] == pytest.approx(0.1 + 0.25 * 0.4)
    assert at["per_example"]["content_fidelity"].mean() == pytest.approx(0.75 * 25 + 0.25 * 75)
    never = curve_at([(0.0, *base), (1.0, {"prompt_fidelity": 95.0, "score": 0.2}, half[1])], 80.0)
    assert never["reached"] == 0.0 and never["scale"] == 1.0 and never["metrics"]["score"] == 0.2


@pytest.mark.slow
def test_select_and_compose_cells_score_at_equal_prompt_fidelity(data, pipeline_run, tmp_path):
    """b4m_select picks a snapshot on validation and copies it; b4m_compose scores the base (reference) and a
    composition on its scale curve, read at the target prompt fidelity, with per-image scores saved."""
    from zoo.data.images.mnist import MNIST
    from zoo.metrics.generation import load_digit_classifier

    try:
        MNIST(split="test[7990:8000]")
        load_digit_classifier()
    except (FileNotFoundError, OSError):
        pytest.skip("needs the shared MNIST data and the shipped digit classifier")
    import numpy as np

    from zoo.cli import run_training

    merge = tmp_path / "merge"
    run_training(str(TINY), _overrides(data, **{"b4m.stage": "merge", "b4m.content_adapter": pipeline_run / "content",
                                                "b4m.style_adapter": pipeline_run / "style", "b4m.snapshot_every": 1,
                                                "trainer.max_steps": 2, "sample.enabled": False}), merge)
    paths = [f"model.pretrained={data['model.pretrained']}", f"data.content_eval_root={data['b4m.content_root']}",
             f"data.style_root={data['b4m.style_root']}"]
    quick = ["eval.num_inference_steps=2", "eval.batch_size=8"]
    sel = run_training(str(REPO / "configs/b4m/select_t2i_mnist.yaml"), paths + quick + [
        f"select.run={merge}", "eval.composite_images=4", "eval.digit_seeds=1", "eval.digit_split=test[7990:8000]"],
        tmp_path / "select")["final"]
    assert set(sel["steps"]) == {"1", "2"} and sel["step"] in (1.0, 2.0)
    best = max(sel["steps"].values(), key=lambda m: m["score"])["score"]
    assert sel["score"] == best
    assert (tmp_path / "select" / "selected" / "pytorch_lora_weights.safetensors").is_file()

    compose = REPO / "configs/b4m/compose_t2i_mnist.yaml"
    small = quick + ["eval.composite_images=10", "eval.digit_seeds=1", "eval.digit_split=test[9900:]"]
    ref = run_training(str(compose), paths + small + ["compose.kind=base"], tmp_path / "ref")["final"]
    assert ref["style_gain"] == 0.0 and 0 <= ref["prompt_fidelity"] <= 100
    got = run_training(str(compose), paths + small + [
        "compose.kind=b4m", f"compose.adapter={tmp_path / 'select' / 'selected'}",
        f"compose.reference={tmp_path / 'ref'}",
        f"compose.content_adapter={pipeline_run / 'content'}", f"compose.style_adapter={pipeline_run / 'style'}",
        "compose.scales=[0.5,1.0]", "compose.target=50.0"], tmp_path / "b4m")["final"]
    assert set(got["curve"]) == {"0.5", "1"} and got["at_1"] == got["curve"]["1"]
    arrays = np.load(tmp_path / "b4m" / "per_example.npz")
    assert arrays["content_fidelity"].shape == arrays["prompt_fidelity"].shape == (10,)
    assert arrays["prompt_fidelity"].mean() == pytest.approx(got["prompt_fidelity"])
    if got["reached"]:
        assert got["prompt_fidelity"] == pytest.approx(50.0)
    with pytest.raises(Exception, match="composite_images"):
        run_training(str(compose), paths + ["eval.composite_images=12", "eval.digit_seeds=1"], tmp_path / "bad")
