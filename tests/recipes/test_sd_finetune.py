"""The sd_finetune recipe end to end on a tiny real-format Stable Diffusion: train -> save -> reload -> sample."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "sara" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(folder: Path, n: int = 4, metadata: bool = False) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        a = np.zeros((24, 20, 3), np.uint8)
        a[..., i % 3] = 200
        a[::4] = rng.integers(0, 255, (6, 20, 3))
        Image.fromarray(a).save(folder / f"img{i}.png")
        if metadata:
            rows.append(json.dumps({"file_name": f"img{i}.png", "text": f"meta caption {i}"}))
        elif i % 2 == 0:
            (folder / f"img{i}.txt").write_text(f"stripes number {i}")
    if metadata:
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    from zoo.diffusion.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd") / "pipe")


@pytest.fixture(scope="module")
def style(tmp_path_factory) -> Path:
    return _images(tmp_path_factory.mktemp("style") / "imgs")


def _overrides(tiny_sd, style, *extra):
    return [f"model.pretrained={tiny_sd}", f"data.root={style}", *extra]


def _fit(tiny_sd, style, out, *extra, resume=None):
    from zoo.cli import build_recipe
    from zoo.engine.trainer import Trainer

    recipe, cfg, _ = build_recipe(str(CONFIG), _overrides(tiny_sd, style, *extra))
    trainer = Trainer(recipe, cfg.trainer, cfg.optim, cfg.schedule, out, seed=cfg.seed, resume=resume)
    return recipe, trainer, trainer.fit()


def _run(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


# ------------------------------------------------------------------------------------------------ end to end
def test_cli_train_then_sample(tiny_sd, style, tmp_path):
    out = tmp_path / "run"
    proc = _run("tools/train.py", CONFIG, *_overrides(tiny_sd, style), "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final: val_loss=" in proc.stdout
    for name in ("config.yaml", "metrics.json", "last.pt", "best.pt", "sara_weights.safetensors", "samples.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["best"]["metric"] == "val_loss"
    # checkpoints hold only the adapter: exactly the SaRA delta tensors of the UNet (names and count), no UNet weight
    from zoo.adapters.sara import apply_sara, sara_state_dict
    from zoo.diffusion.pipeline import load_pipeline

    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    unet = load_pipeline(tiny_sd).unet
    unet_keys = set(unet.state_dict())
    apply_sara(unet, 2e-2)  # configs/sara/tiny.yaml's threshold
    want = set(sara_state_dict(unet))
    assert set(last["model"]) == want and len(last["model"]) == len(want) > 0
    assert not set(last["model"]) & unet_keys
    from PIL import Image

    from zoo.diffusion.sampling import sample_main  # what tools/sample.py runs (in-process: saves the imports)

    assert sample_main(["--pipeline", str(tiny_sd), "--adapter", str(out), "--prompts", "a red dog", "a cat",
                        "--output", str(tmp_path / "grid.png"), "--steps", "2", "--height", "16", "--width", "16"]) == 0

    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] >= 2 * 16 and im.size[1] >= 2 * 16


def test_sara_exact_resume_and_bit_identical_reload(tiny_sd, style, tmp_path):
    from safetensors.torch import load_file

    from zoo.adapters.sara import load_sara
    from zoo.diffusion.pipeline import load_pipeline

    extra = ["schedule.name=constant", "adapter.progressive_iter=3", "model.gradient_checkpointing=true",
             "sample.enabled=false"]
    recipe, _, summary = _fit(tiny_sd, style, tmp_path / "a", *extra, "trainer.epochs=2")
    assert summary["steps"] == 4
    _fit(tiny_sd, style, tmp_path / "b", *extra, "trainer.epochs=1")
    _fit(tiny_sd, style, tmp_path / "b", *extra, "trainer.epochs=2", resume="auto")
    a, b = load_file(tmp_path / "a" / "sara_weights.safetensors"), load_file(tmp_path / "b" / "sara_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the saved file applied to a freshly loaded pipeline reproduces the trained UNet bit for bit
    trained = recipe.components.unet.eval()
    plain = load_pipeline(tiny_sd).unet.eval()
    load_sara(plain, tmp_path / "a" / "sara_weights.safetensors")
    x, t, e = torch.randn(2, 4, 8, 8), torch.tensor([5, 700]), torch.randn(2, 16, 32)
    with torch.no_grad():
        assert torch.equal(plain(x, t, e).sample, trained(x, t, e).sample)


def test_lora_baseline_saves_diffusers_format_with_v_prediction(tiny_sd, style, tmp_path):
    from safetensors.torch import load_file

    from zoo.diffusion.pipeline import load_pipeline

    recipe, _, _ = _fit(tiny_sd, style, tmp_path / "lora", "adapter={name: lora, init: 'true'}",
                        "model.prediction_type=v_prediction", "trainer.epochs=1")
    assert recipe.components.noise_scheduler.config.prediction_type == "v_prediction"
    f = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    keys = list(load_file(f))
    assert keys and all(k.startswith("unet.") and ".lora" in k for k in keys)
    last = torch.load(tmp_path / "lora" / "last.pt", map_location="cpu", weights_only=True)
    from zoo.adapters.model import adapter_state_dict, iter_lora_layers

    trained_unet = recipe.components.unet
    assert set(last["model"]) == set(adapter_state_dict(trained_unet, ["lora"]))  # the adapter's tensors only
    assert {n for n, _ in iter_lora_layers(trained_unet)} == {k[len("unet."):].rsplit(".lora_", 1)[0] for k in keys}
    pipe = load_pipeline(tiny_sd)
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 16, 32)
    with torch.no_grad():
        base = pipe.unet(x, t, e).sample
        pipe.load_lora_weights(str(f.parent), weight_name=f.name)
        tuned = pipe.unet(x, t, e).sample
        trained = recipe.components.unet.eval()(x, t, e).sample
    torch.testing.assert_close(tuned, trained, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, tuned)


def test_peft_lora_baseline_file_reads_into_our_core(tiny_sd, style, tmp_path):
    pytest.importorskip("peft")
    from zoo.diffusion.adapters import detect_adapter, load_adapter
    from zoo.diffusion.pipeline import load_pipeline

    recipe, _, _ = _fit(tiny_sd, style, tmp_path / "peft", "adapter={name: peft_lora, init: 'true'}",
                        "trainer.epochs=1", "sample.enabled=false")
    last = torch.load(tmp_path / "peft" / "last.pt", map_location="cpu", weights_only=True)
    assert last["model"] and all(".lora_A." in k or ".lora_B." in k for k in last["model"])
    assert detect_adapter(tmp_path / "peft") == "lora"
    pipe = load_pipeline(tiny_sd)
    set_enabled = load_adapter(pipe, tmp_path / "peft")  # a UNet-only diffusers file: read by our core
    x, t, e = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 16, 32)
    with torch.no_grad():
        tuned = pipe.unet(x, t, e).sample
        set_enabled(False)
        base = pipe.unet(x, t, e).sample
        trained = recipe.components.unet.eval()(x, t, e).sample
    torch.testing.assert_close(tuned, trained, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, tuned)


def test_full_finetune_saves_unet_folder(tiny_sd, style, tmp_path):
    _fit(tiny_sd, style, tmp_path / "full", "adapter={name: full}", "trainer.epochs=1", "sample.enabled=false")
    assert (tmp_path / "full" / "unet" / "config.json").is_file()
    from zoo.diffusion.adapters import detect_adapter

    assert detect_adapter(tmp_path / "full") == "full"


# ------------------------------------------------------------------------------------------------ errors
def test_config_errors_name_the_fix(tiny_sd, style, tmp_path):
    from zoo.cli import build_recipe
    from zoo.config import ConfigError

    with pytest.raises(FileNotFoundError, match="Stable Diffusion model not found at .*nowhere"):
        build_recipe(str(CONFIG), _overrides(tmp_path / "nowhere", style))
    with pytest.raises(ConfigError, match="model.pretrained is not set"):
        build_recipe(str(CONFIG), [f"data.root={style}"])
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        build_recipe(str(CONFIG), _overrides(style, style))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no images found in .*empty"):
        build_recipe(str(CONFIG), _overrides(tiny_sd, empty))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        build_recipe(str(CONFIG), _overrides(tiny_sd, tmp_path / "missing"))
    with pytest.raises(ConfigError, match="adapter.name: .*'dora'"):
        build_recipe(str(CONFIG), _overrides(tiny_sd, style, "adapter={name: dora}"))
    recipe, cfg, _ = build_recipe(str(CONFIG), _overrides(tiny_sd, style))
    assert type(recipe).main_metric_mode == "min"  # the Trainer keeps the lowest val_loss by default
    with pytest.raises(ConfigError, match="Unknown config key 'adapter.treshold' for adapter method 'sara'"):
        build_recipe(str(CONFIG), _overrides(tiny_sd, style, "adapter.treshold=0.1"))
    # a SaRA key left in the section when switching the method names the method it does not belong to
    with pytest.raises(ConfigError, match="'adapter.threshold' for adapter method 'lora'"):
        build_recipe(str(CONFIG), _overrides(tiny_sd, style, "adapter.name=lora"))
    # the keys of configs written before the adapter section name their replacement
    for old, new in (("model.adapter=lora", "adapter.name"), ("model.sara.threshold=0.1", "adapter.threshold"),
                     ("model.lora.rank=8", "adapter.rank")):
        with pytest.raises(ConfigError, match=f"'{old.split('=')[0]}' .*moved.*{new}"):
            build_recipe(str(CONFIG), _overrides(tiny_sd, style, old))
    with pytest.raises(ConfigError, match="trainer.ema_decay is not supported with adapter.name=sara"):
        build_recipe(str(CONFIG), _overrides(tiny_sd, style, "trainer.ema_decay=0.9"))


def test_cli_reports_config_errors(tiny_sd, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run("tools/train.py", CONFIG, f"model.pretrained={tiny_sd}", f"data.root={empty}")
    assert proc.returncode == 2 and "no images found" in proc.stderr and str(empty) in proc.stderr
    from zoo.cli import train_main

    assert train_main([str(CONFIG), f"model.pretrained={tmp_path / 'nope'}", f"data.root={empty}"]) == 2
    assert "Stable Diffusion model not found" in capsys.readouterr().err


def test_single_file_goes_through_from_single_file(tiny_sd, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from zoo.diffusion.pipeline import load_pipeline

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"stub")
    calls = {}

    def fake(path, **kwargs):
        calls.update(path=path, **kwargs)
        return "pipe"

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", staticmethod(fake))
    assert load_pipeline(ckpt, single_file_config=tiny_sd) == "pipe"
    assert calls["path"] == str(ckpt) and calls["config"] == str(tiny_sd) and calls["local_files_only"] is True
    with pytest.raises(ValueError, match="not a checkpoint"):
        (tmp_path / "notes.txt").write_text("x")
        load_pipeline(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------------ data
def test_captioned_folder_sidecars_metadata_and_prefix(tmp_path):
    from zoo.data import build_dataset
    from zoo.data.images.folder import CaptionedImageFolder

    side = _images(tmp_path / "side")
    ds = CaptionedImageFolder(side, resolution=16, prefix="Barbie style, ", default_caption="a thing")
    assert len(ds) == 4 and [ds.caption(i) for i in range(2)] == ["Barbie style, stripes number 0", "Barbie style, a thing"]
    item = ds[0]
    assert item["pixel_values"].shape == (3, 16, 16) and -1 <= item["pixel_values"].min() <= item["pixel_values"].max() <= 1
    meta = _images(tmp_path / "meta", n=3, metadata=True)
    ds = build_dataset("captioned_images", root=str(meta), split="test", resolution=8, repeats=2)
    assert len(ds) == 6 and ds.caption(4) == "meta caption 1"
    # centre crop, no flip: the expected pixels computed here without torchvision (PIL resize + crop by hand)
    import numpy as np
    from PIL import Image

    def expected(name):
        with Image.open(meta / name) as im:
            w, h = im.size  # 20 x 24: the short side (width) becomes 8, the long one int(8 * 24 / 20) = 9
            im = im.convert("RGB").resize((8, int(8 * h / w)), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32)[0:8, 0:8]  # centre crop of 9 rows: top = round(0.5) = 0
        return torch.from_numpy(a / 255.0 * 2.0 - 1.0).permute(2, 0, 1)

    for i, name in ((0, "img0.png"), (1, "img1.png"), (3, "img0.png")):  # item 3 repeats item 0
        torch.testing.assert_close(ds[i]["pixel_values"], expected(name), rtol=0, atol=1e-6)
    assert not torch.allclose(expected("img0.png"), expected("img1.png"))
    (meta / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(FileNotFoundError, match="gone.png"):
        CaptionedImageFolder(meta)


# ------------------------------------------------------------------------------------------------ SDXL
@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    from zoo.diffusion.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sdxl") / "pipe", sdxl=True)


def test_sdxl_folder_trains_lora_with_two_text_encoders(tiny_sdxl, style, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from zoo.diffusion.pipeline import load_pipeline
    from zoo.diffusion.sampling import sample_main

    recipe, _, summary = _fit(tiny_sdxl, style, tmp_path / "xl", "adapter={name: lora, init: 'true'}",
                              "trainer.epochs=1")
    c = recipe.components
    assert c.is_sdxl and c.text_encoder_2 is not None and summary["steps"] == 2
    assert (tmp_path / "xl" / "samples.png").is_file()  # rendered by a StableDiffusionXLPipeline
    # the batch carries both tokenizations; the UNet gets the pooled embedding and the time ids
    batch = next(iter(recipe.build_eval_loader()))
    assert batch["input_ids"].shape == batch["input_ids_2"].shape
    _, text, cond = recipe._encode(batch, sample=False)
    assert text.shape[-1] == 64 and cond["text_embeds"].shape == (text.shape[0], 32)
    assert cond["time_ids"].tolist()[0] == [16, 16, 0, 0, 16, 16]
    pipe = load_pipeline(tiny_sdxl)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    f = tmp_path / "xl" / "pytorch_lora_weights.safetensors"
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 600])
    with torch.no_grad():
        base = pipe.unet(x, t, text, added_cond_kwargs=cond).sample
        pipe.load_lora_weights(str(f.parent), weight_name=f.name)  # diffusers' SDXL loader reads our file
        tuned = pipe.unet(x, t, text, added_cond_kwargs=cond).sample
        trained = c.unet.eval()(x, t, text, added_cond_kwargs=cond).sample
    torch.testing.assert_close(tuned, trained, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(base, tuned)
    assert sample_main(["--pipeline", str(tiny_sdxl), "--adapter", str(tmp_path / "xl"), "--prompts", "a cat",
                        "--output", str(tmp_path / "grid.png"), "--steps", "2", "--height", "16", "--width", "16"]) == 0


def test_sara_progressive_schedule_follows_the_trainers_plan(tiny_sd, style):
    """SaRA's progressive_iter as a fraction is taken of the run's real length, also in the iteration loop."""
    from zoo.cli import build_recipe
    from zoo.engine.trainer import TrainPlan

    recipe, _, _ = build_recipe(str(CONFIG), _overrides(tiny_sd, style, "trainer.max_steps=7"))
    assert recipe._total_steps() == 7
    recipe.plan = TrainPlan(total_steps=12, steps_per_epoch=None, epochs=None)
    assert recipe._total_steps() == 12


# ------------------------------------------------------------------------------------------------ any method
@pytest.mark.parametrize("section", ["{name: plp, rank: 2, basis_rows: null}", "{name: sara, threshold: 0.02}",
                                     "{name: lora, target_modules: [conv_in, proj_in, to_q], rank: 2}"])
def test_any_method_on_the_unet_is_a_config_change(tiny_sd, style, tmp_path, section):
    """adapter={...} alone switches the method: it trains (the loss moves the adapter), checkpoints and saves."""
    from zoo.adapters.base import build_adapter
    from zoo.diffusion.adapters import detect_adapter

    recipe, _, summary = _fit(tiny_sd, style, tmp_path / "m", f"adapter={section}", "trainer.epochs=1",
                              "sample.enabled=false")
    name = recipe.adapter.name
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["final"]["val_loss"]))
    last = torch.load(tmp_path / "m" / "last.pt", map_location="cpu", weights_only=True)
    assert set(last["model"]) == set(recipe.adapter.state_dict(recipe.components.unet))
    fresh = build_adapter(recipe.adapter.config)
    from zoo.diffusion.pipeline import load_pipeline

    untrained = fresh.state_dict(fresh.apply(load_pipeline(tiny_sd).unet))
    zero_init = [k for k, v in untrained.items() if v.is_floating_point() and not v.any()]  # LoRA up, SaRA changes
    assert zero_init and any(last["model"][k].any() for k in zero_init)  # the steps trained the adapter
    assert detect_adapter(tmp_path / "m") == {"plp": "lora"}.get(name, name)


def test_methods_that_measure_on_data_are_calibrated_with_the_recipe_loss(tiny_sd, style, tmp_path):
    """needs_calibration: calibrate() gets data.calibration_batches training batches, this recipe's denoising
    loss and a backward that fills gradients, before apply()."""
    from zoo.adapters.base import ADAPTERS, register_adapter
    from zoo.adapters.lora import LoRAConfig, LoRAMethod

    seen = {}

    class Probe(LoRAMethod):
        needs_calibration = True

        def calibrate(self, model, batches, loss_fn, backward):
            batches = list(batches)
            loss = loss_fn(model, batches[0])
            backward(loss)
            seen.update(n=len(batches), loss=loss.item(), keys=set(batches[0]),
                        grads=sum(p.grad is not None for p in model.parameters()), applied=bool(list(
                            __import__("zoo.adapters.model", fromlist=["x"]).iter_lora_layers(model))))
            model.zero_grad(set_to_none=True)

    register_adapter("test_probe", config=LoRAConfig)(Probe)
    try:
        _fit(tiny_sd, style, tmp_path / "p", "adapter={name: test_probe}", "data.calibration_batches=2",
             "trainer.epochs=1", "sample.enabled=false")
    finally:
        ADAPTERS._entries.pop("test_probe")
    assert seen["n"] == 2 and seen["loss"] > 0 and {"pixel_values", "input_ids"} <= seen["keys"]
    assert seen["grads"] > 0 and not seen["applied"]  # measured on the plain UNet, before apply


def test_validation_loss_noise_is_per_example(tiny_sd, style):
    """The noise of an evaluation image depends on its index only: any split into batches (or processes) gives
    every image the loss the one-process evaluation gives it."""
    from zoo.cli import build_recipe

    recipe, _, _ = build_recipe(str(CONFIG), _overrides(tiny_sd, style, "data.eval_images=3", "data.eval_batch_size=2"))
    model = recipe.build_model().eval()
    loader = recipe.build_eval_loader()
    with torch.no_grad():
        whole = torch.cat([recipe.eval_step(model, b)["val_loss"] for b in loader])
        items = [loader.collate_fn([loader.dataset[i]]) for i in (2, 0, 1)]
        single = torch.stack([recipe.eval_step(model, b)["val_loss"][0] for b in items])
    assert whole.shape == (3,)
    torch.testing.assert_close(single, whole[[2, 0, 1]], rtol=1e-6, atol=1e-7)
