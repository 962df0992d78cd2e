"""Nothing the user has is lost: demo pictures never replace inputs or each other,
unreadable images are skipped, the converter never writes over its input."""
import os

import torch

from helpers import YACS_DEMO, last_line, load_script, requires_detectron2, run

pytestmark = requires_detectron2


# ------------------------------------------------------------------ no data loss
def _demo_module():
    return load_script("demo.py")


def test_demo_pictures_never_replace_inputs_or_each_other(tmp_path):
    demo = _demo_module()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for path in (a / "x.png", a / "x.jpg", b / "x.png"):
        path.write_bytes(b"image")
    os.symlink(a / "x.jpg", tmp_path / "link.png")
    files = [str(a / "x.jpg"), str(a / "x.png"), str(b / "x.png")]
    paths, notes = demo.output_paths(files, str(a))  # pictures beside the inputs
    assert paths == {str(a / "x.jpg"): str(a / "x_jpg.png"), str(a / "x.png"): str(a / "x_png.png"),
                     str(b / "x.png"): str(a / "x_png_2.png")}
    assert [n[2] for n in notes] == ["x.png is the input " + str(a / "x.png"),
                                     "x.png is the input " + str(a / "x.png"),
                                     "x.png is the input " + str(a / "x.png")]
    # A link in the output folder to an input is that input.
    paths, _ = demo.output_paths([str(a / "x.jpg")], str(tmp_path))
    assert paths == {str(a / "x.jpg"): str(tmp_path / "x.png")}
    paths, _ = demo.output_paths([str(a / "x.jpg"), str(tmp_path / "link.png")], str(tmp_path))
    assert len(paths) == 2 and str(tmp_path / "link.png") not in paths.values()


def test_demo_keeps_inputs_skips_unreadable_images_and_warns_without_weights(cache, tmp_path):
    """--output is the input folder, where good.jpg's picture would be named good.png."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    source = Image.open(os.path.join(cache, "shapes_v1", "coco", "val", "00000.png"))
    source.save(folder / "good.png")
    source.convert("RGB").save(folder / "good.jpg")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    proc = run("demo.py", "--config-file", YACS_DEMO, "--input", str(folder), "--output",
               str(folder), cache=cache)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before
    assert sorted(p.name for p in folder.iterdir()) == [
        "bad.jpg", "good.jpg", "good.png", "good_jpg.png", "good_png.png"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"skipped {folder / 'bad.jpg'}: not a readable image" in proc.stderr
    renamed = f"{folder / 'good.jpg'} -> {folder / 'good_jpg.png'} (good.png is the input"
    assert renamed in proc.stderr
    assert last_line(proc.stderr) == (f"drew 2 of 3 images into {folder}; skipped 1 that could "
                                      f"not be read: {folder / 'bad.jpg'}")
    assert proc.stderr.count("UNTRAINED model") == 1


def test_converter_refuses_dst_equal_to_src_and_writes_into_a_folder(tmp_path, monkeypatch):
    from official_fixtures import load_fixture, official_checkpoint

    from involution_d2.checkpoint import cli

    src = tmp_path / "rednet26.pth"
    torch.save({"state_dict": official_checkpoint(load_fixture("rednet26")), "meta": {}}, src)
    original = src.read_bytes()
    os.symlink(src, tmp_path / "link.pth")
    monkeypatch.chdir(tmp_path)
    for dst in (str(src), str(tmp_path / "link.pth"), "./rednet26.pth", "../" +
                os.path.basename(tmp_path) + "/rednet26.pth"):
        assert cli.main([str(src), dst]) == 2, dst
    assert src.read_bytes() == original
    (tmp_path / "converted").mkdir()
    assert cli.main(["rednet26.pth", "converted"]) == 0
    saved = torch.load(tmp_path / "converted" / "rednet26_d2.pth", weights_only=True)
    assert "res5.0.conv2.conv1.conv.weight" in saved["model"]
    assert cli.main(["rednet26.pth", "."]) == 0 and (tmp_path / "rednet26_d2.pth").exists()
