"""``hdsr-upscale``: inputs, output modes and sizes, failures, exit status."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hdsr.cli.upscale import image_files, load_image, main
from hdsr.imaging import read_image
from hdsr.imresize import imresize
from hdsr.inference.forward import upscale
from hdsr.inference.loading import load_model
from hdsr.models import HDSRNet
from helpers.imagefiles import random_png16

TINY = {
    "_target_": "hdsr.models.HDSRNet",
    "scale": 2,
    "n_feats": 8,
    "n_blocks": 1,
    "lower_layers": 2,
}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An hdsr-train-style checkpoint of a tiny HDSRNet x2 (8 features, 1 block)."""
    torch.manual_seed(0)
    net = HDSRNet(**{k: v for k, v in TINY.items() if k != "_target_"})
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": {"net_config": TINY, "scale": 2, "model_name": "tiny"},
        },
        path,
    )
    return path


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _expected_rgb(ckpt: Path, rgb: np.ndarray) -> np.ndarray:
    """What the CLI should write for an RGB array (untiled, float32)."""
    model = load_model(ckpt)
    lr = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float()
    sr = upscale(model.net, lr, model.scale)
    return sr[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    """A folder of good, refused and broken images, and a loose file outside it."""
    d = tmp_path / "in"
    d.mkdir()
    paths = {}
    Image.fromarray(_rgb(12, 10, 1)).save(d / "a_rgb.png")
    Image.fromarray(_rgb(9, 11, 2)).save(d / "b_photo.jpg", quality=95)
    Image.fromarray(_rgb(10, 8, 3)[:, :, 0]).save(d / "c_gray.png")
    rgba = np.dstack([_rgb(8, 9, 4), np.linspace(0, 255, 72).reshape(8, 9).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "d_rgba.png")
    Image.fromarray(rgba[:, :, [0, 3]], "LA").save(d / "e_la.png")
    Image.fromarray(_rgb(7, 9, 5)).convert("P").save(d / "f_palette.png")
    Image.fromarray((np.arange(80).reshape(8, 10) * 800).astype(np.uint16)).save(d / "g_16bit.png")
    good = (d / "a_rgb.png").read_bytes()
    (d / "h_truncated.png").write_bytes(good[: len(good) // 2])
    (d / "i_garbage.png").write_bytes(b"\x89PNG not really" + bytes(range(200)))
    (d / "notes.txt").write_text("not an image, not picked up from the folder")
    loose = tmp_path / "loose.png"
    Image.fromarray(_rgb(6, 7, 6)).save(loose)
    paths.update(folder=d, loose=loose)
    return paths


def test_folders_expand_to_sorted_image_files(inputs):
    files = image_files([inputs["folder"], inputs["loose"]])
    names = [p.name for p in files]
    assert "notes.txt" not in names
    assert names[:-1] == sorted(names[:-1]) and names[-1] == "loose.png"
    assert len(names) == 10


def test_cli_writes_every_good_image_and_reports_the_rest(tiny_ckpt, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [str(inputs["folder"]), str(inputs["loose"]), "-o", str(out)]
        + ["--ckpt", str(tiny_ckpt), "--device", "cpu"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    written = sorted(p.name for p in out.iterdir())
    assert written == [
        "a_rgb_x2.png",
        "b_photo_x2.png",
        "c_gray_x2.png",
        "d_rgba_x2.png",
        "e_la_x2.png",
        "f_palette_x2.png",
        "loose_x2.png",
    ]  # nothing for the failures, no temporary files left
    for stem in ("g_16bit", "h_truncated", "i_garbage"):
        assert f"{stem}.png" in err
    assert "16-bit" in err and "3 failed" in err

    modes = {p.stem: (Image.open(p).mode, Image.open(p).size) for p in out.iterdir()}
    assert modes["a_rgb_x2"] == ("RGB", (20, 24))  # PIL sizes are (W, H)
    assert modes["b_photo_x2"] == ("RGB", (22, 18))
    assert modes["c_gray_x2"] == ("L", (16, 20))
    assert modes["d_rgba_x2"] == ("RGBA", (18, 16))
    assert modes["e_la_x2"] == ("LA", (18, 16))
    assert modes["f_palette_x2"] == ("RGB", (18, 14))
    assert modes["loose_x2"] == ("RGB", (14, 12))

    rgb = np.asarray(Image.open(inputs["folder"] / "a_rgb.png"))
    assert np.array_equal(
        np.asarray(Image.open(out / "a_rgb_x2.png")), _expected_rgb(tiny_ckpt, rgb)
    )


def test_gray_and_alpha_outputs(tiny_ckpt, inputs, tmp_path):
    out = tmp_path / "out"
    d = inputs["folder"]
    files = [d / "c_gray.png", d / "d_rgba.png"]
    assert main([*map(str, files), "-o", str(out), "--ckpt", str(tiny_ckpt)]) == 0

    gray = np.asarray(Image.open(d / "c_gray.png"))
    model = load_model(tiny_ckpt)
    lr = torch.from_numpy(np.repeat(gray[:, :, None], 3, 2)).permute(2, 0, 1)[None].float()
    sr = upscale(model.net, lr, 2)[0]
    expected = sr.mean(0).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(Image.open(out / "c_gray_x2.png")), expected)

    rgba = np.asarray(Image.open(d / "d_rgba.png"))
    got = np.asarray(Image.open(out / "d_rgba_x2.png"))
    assert np.array_equal(got[:, :, 3], imresize(np.ascontiguousarray(rgba[:, :, 3]), 2))
    assert np.array_equal(got[:, :, :3], _expected_rgb(tiny_ckpt, rgba[:, :, :3].copy()))


def test_success_exit_status_tiling_and_options(tiny_ckpt, tmp_path):
    img = tmp_path / "p.png"
    Image.fromarray(_rgb(20, 24, 7)).save(img)
    rc = main([str(img), "-o", str(tmp_path / "untiled"), "--ckpt", str(tiny_ckpt)])
    assert rc == 0
    rc = main(
        [str(img), "-o", str(tmp_path / "tiled"), "--ckpt", str(tiny_ckpt)]
        + ["--tile", "8", "--overlap", "16"]
    )
    assert rc == 0
    a = np.asarray(Image.open(tmp_path / "untiled" / "p_x2.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "tiled" / "p_x2.png")).astype(int)
    assert np.abs(a - b).max() <= 1
    rc = main(
        [str(img), "-o", str(tmp_path / "local"), "--ckpt", str(tiny_ckpt), "--tile", "8"]
        + ["--tile-attention", "local"]
    )
    assert rc == 0 and Image.open(tmp_path / "local" / "p_x2.png").size == (48, 40)
    rc = main(
        [str(img), "-o", str(tmp_path / "ens"), "--ckpt", str(tiny_ckpt)]
        + ["--self-ensemble", "--precision", "bf16", "--device", "auto"]
    )
    assert rc == 0 and Image.open(tmp_path / "ens" / "p_x2.png").size == (48, 40)


def test_official_checkpoint_and_name_collisions(tmp_path, capsys):
    from helpers.official_reference import RefHDSRNet

    torch.manual_seed(0)
    ckpt = tmp_path / "HDSRNet_x3.pt"
    torch.save(RefHDSRNet(3).state_dict(), ckpt)
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_rgb(6, 5)).save(d / "x.png")
    Image.fromarray(_rgb(6, 5)).save(d / "x.bmp")
    rc = main([str(d), "-o", str(tmp_path / "out"), "--ckpt", str(ckpt)])
    assert rc == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x_x3.png"]
    assert Image.open(tmp_path / "out" / "x_x3.png").size == (15, 18)
    assert "overwrite" in capsys.readouterr().err


def test_bad_checkpoint_and_no_images(tmp_path, tiny_ckpt):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"nope")
    img = tmp_path / "p.png"
    Image.fromarray(_rgb(4, 4)).save(img)
    assert main([str(img), "-o", str(tmp_path / "o"), "--ckpt", str(junk)]) == 2
    if not torch.cuda.is_available():
        assert (
            main(
                [str(img), "-o", str(tmp_path / "o"), "--ckpt", str(tiny_ckpt)]
                + ["--device", "cuda"]
            )
            == 2
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "-o", str(tmp_path / "o"), "--ckpt", str(tiny_ckpt)]) == 1


def test_load_image_modes(inputs):
    d = inputs["folder"]
    assert load_image(d / "c_gray.png").gray
    la = load_image(d / "e_la.png")
    assert la.gray and la.alpha is not None and la.rgb.shape == (8, 9, 3)
    assert load_image(d / "f_palette.png").alpha is None
    with pytest.raises(ValueError, match="g_16bit.png"):
        load_image(d / "g_16bit.png")


def test_16_bit_colour_png_is_refused_not_truncated(tmp_path, tiny_ckpt, capsys):
    deep = tmp_path / "deep_rgb.png"
    random_png16(deep, 6, 5)
    assert Image.open(deep).mode == "RGB"  # PIL alone would silently drop the low bytes
    with pytest.raises(ValueError, match="16 bits per channel"):
        load_image(deep)
    assert main([str(deep), "-o", str(tmp_path / "o"), "--ckpt", str(tiny_ckpt)]) == 1
    assert "deep_rgb.png" in capsys.readouterr().err
    assert not (tmp_path / "o" / "deep_rgb_x2.png").exists()


def test_exif_orientation_is_applied(tmp_path, tiny_ckpt):
    src = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: shown rotated 90 degrees clockwise
    Image.fromarray(_rgb(6, 10, 8)).save(src, quality=95, exif=exif.tobytes())
    assert Image.open(src).getexif()[0x0112] == 6
    stored = np.asarray(Image.open(src))
    assert stored.shape == (6, 10, 3)
    upright = np.ascontiguousarray(np.rot90(stored, k=-1))
    np.testing.assert_array_equal(load_image(src).rgb, upright)
    np.testing.assert_array_equal(read_image(src), stored)  # training data: as stored
    out = tmp_path / "out"
    assert main([str(src), "-o", str(out), "--ckpt", str(tiny_ckpt)]) == 0
    got = np.asarray(Image.open(out / "portrait_x2.png"))
    assert got.shape == (20, 12, 3)
    np.testing.assert_array_equal(got, _expected_rgb(tiny_ckpt, upright))


def test_animated_gif_is_upscaled_as_its_first_frame_with_a_notice(tmp_path, tiny_ckpt, capsys):
    src = tmp_path / "anim.gif"
    frames = [Image.fromarray(_rgb(8, 9, k)).convert("P") for k in range(3)]
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(src).n_frames == 3
    assert load_image(src).notes == [f"{src}: animated, 3 frames: upscaling the first frame only"]
    still = tmp_path / "still.gif"
    frames[0].save(still)
    assert load_image(still).notes == []
    out = tmp_path / "out"
    assert main([str(src), str(still), "-o", str(out), "--ckpt", str(tiny_ckpt)]) == 0
    err = capsys.readouterr().err
    assert f"{src}: animated, 3 frames: upscaling the first frame only" in err
    assert err.count("frames") == 1
    first = np.asarray(Image.open(src).convert("RGB"))
    got = np.asarray(Image.open(out / "anim_x2.png"))
    np.testing.assert_array_equal(got, _expected_rgb(tiny_ckpt, first))


def test_memory_budget_picks_the_path_and_says_so(tiny_ckpt, tmp_path, capsys):
    """Untiled when the pass fits the budget; stage-wise tiles under a smaller one, within a
    grey level of untiled; each image's path and reason printed once."""
    img = tmp_path / "p.png"
    Image.fromarray(_rgb(300, 400, 8)).save(img)
    base = [str(img), "--ckpt", str(tiny_ckpt), "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "fits"), "--max-memory", "8G"]) == 0
    err = capsys.readouterr().err
    assert err.count("p.png: 400x300 -> untiled (needs ~") == 1 and "of a 8.0 GiB budget" in err
    assert main([*base, "-o", str(tmp_path / "tiled"), "--max-memory", "500M"]) == 0
    err = capsys.readouterr().err
    assert err.count("p.png: 400x300 -> stagewise tiles of 256 px") == 1
    assert "500 MiB budget; untiled needs ~" in err
    a = np.asarray(Image.open(tmp_path / "fits" / "p_x2.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "tiled" / "p_x2.png")).astype(int)
    assert a.shape == (600, 800, 3) and np.abs(a - b).max() <= 1
    assert np.array_equal(a, _expected_rgb(tiny_ckpt, np.asarray(Image.open(img))))


def test_budget_too_small_fails_that_image_and_names_the_least(tiny_ckpt, tmp_path, capsys):
    img = tmp_path / "p.png"
    Image.fromarray(_rgb(30, 40, 9)).save(img)
    out = tmp_path / "out"
    rc = main([str(img), "-o", str(out), "--ckpt", str(tiny_ckpt), "--max-memory", "1M"])
    err = capsys.readouterr().err
    assert rc == 1
    assert not out.exists() or not any(out.iterdir())
    assert "1.0 MiB memory budget is too small for a 40x30 image at x2" in err
    assert "the least it can run in is ~" in err and "--max-memory" in err


@pytest.mark.parametrize("value", ["lots", "-2G", "0"])
def test_bad_max_memory_is_refused_naming_the_option(tiny_ckpt, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["x.png", "-o", str(tmp_path), "--ckpt", str(tiny_ckpt), f"--max-memory={value}"])
    assert exit_.value.code == 2
    assert "--max-memory" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(1, 37), (37, 1), (1, 1)])
def test_one_pixel_wide_images(tiny_ckpt, tmp_path, shape):
    img = tmp_path / "thin.png"
    Image.fromarray(_rgb(*shape, seed=3)).save(img)
    for name, flags in (("untiled", []), ("tiled", ["--tile", "4"])):
        assert main([str(img), "-o", str(tmp_path / name), "--ckpt", str(tiny_ckpt), *flags]) == 0
    a = np.asarray(Image.open(tmp_path / "untiled" / "thin_x2.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "tiled" / "thin_x2.png")).astype(int)
    assert a.shape == (2 * shape[0], 2 * shape[1], 3) and np.abs(a - b).max() <= 1


def test_a_failed_write_is_that_files_failure_and_the_others_go_on(tiny_ckpt, tmp_path, capsys):
    """Outputs are written in a background thread while the next image runs: a write that
    fails is reported for its own file, in input order, and the rest are written."""
    names = ["a.png", "b.png", "c.png"]
    for i, name in enumerate(names):
        Image.fromarray(_rgb(10, 12, seed=20 + i)).save(tmp_path / name)
    out = tmp_path / "out"
    (out / "b_x2.png").mkdir(parents=True)  # the output's name is taken by a folder
    rc = main([*(str(tmp_path / n) for n in names), "-o", str(out), "--ckpt", str(tiny_ckpt)])
    err = capsys.readouterr().err
    assert rc == 1 and "wrote 2 of 3 image(s)" in err and "1 failed" in err
    assert f"{tmp_path / 'b.png'}: IsADirectoryError" in err.replace("\n", "")
    for name in ("a", "c"):
        got = np.asarray(Image.open(out / f"{name}_x2.png"))
        want = _expected_rgb(tiny_ckpt, np.asarray(Image.open(tmp_path / f"{name}.png")))
        assert np.array_equal(got, want)
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "b_x2.png", "c_x2.png"]


def test_an_output_that_would_replace_an_input_is_refused_before_any_work(
    tiny_ckpt, tmp_path, capsys, monkeypatch
):
    """``a.png``'s output ``a_x2.png`` beside an input ``a_x2.png`` (or a rerun into the
    input folder): refused, nothing computed, nothing written."""
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(_rgb(6, 5, 1)).save(d / "a.png")
    Image.fromarray(_rgb(6, 5, 2)).save(d / "a_x2.png")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    import hdsr.cli.upscale as cli

    monkeypatch.setattr(cli, "upscale_image", lambda *a, **k: pytest.fail("computed"))
    assert main([str(d), "-o", str(d), "--ckpt", str(tiny_ckpt)]) == 2
    err = "".join(capsys.readouterr().err.split())  # rich wraps long lines, even in paths
    said = f"the output of {d / 'a.png'} would replace the input {d / 'a_x2.png'}"
    assert "".join(said.split()) in err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_an_unusable_destination_is_refused_before_any_work(
    tiny_ckpt, tmp_path, capsys, monkeypatch
):
    img = tmp_path / "p.png"
    Image.fromarray(_rgb(6, 5)).save(img)
    import hdsr.cli.upscale as cli

    monkeypatch.setattr(cli, "upscale_image", lambda *a, **k: pytest.fail("computed"))
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a folder")
    assert main([str(img), "-o", str(a_file), "--ckpt", str(tiny_ckpt)]) == 2
    assert f"-o{a_file}isafile,notafolder" in "".join(capsys.readouterr().err.split())
    below_a_file = a_file / "out"
    assert main([str(img), "-o", str(below_a_file), "--ckpt", str(tiny_ckpt)]) == 2
    assert f"-o{below_a_file}:cannotwritethere" in "".join(capsys.readouterr().err.split())
    assert a_file.read_text() == "not a folder"
