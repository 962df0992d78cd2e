"""Cityscapes data: a synthetic tree loaded and evaluated by Detectron2's own code, the error
when the data is missing, and the training augmentations (photometric and geometric)."""
import colorsys
import json
import os

import numpy as np
import pytest
import torch

from helpers import CONFIG_ROOT, requires_detectron2

pytestmark = requires_detectron2

VAL = "cityscapes_fine_sem_seg_val"
NUM_CLASSES = 19
IGNORE = 255
H, W = 64, 128
# city: number of images
CITIES = {"aachen": 2, "bremen": 1}
ABSENT = 18  # no synthetic label uses "bicycle", so its IoU is undefined


def synthetic_label(seed):
    """64x128 train ids in 8x8 blocks: classes 0..17 (0, 5 and 11 always there), some ignore."""
    blocks = np.random.RandomState(seed).randint(0, ABSENT, size=(H // 8, W // 8))
    blocks[0, :3] = [0, 5, 11]
    blocks[-1, -4:] = IGNORE
    label = np.kron(blocks, np.ones((8, 8), dtype=int)).astype(np.uint8)
    label[10:13, 20:90] = IGNORE  # an ignored strip across blocks
    return label


def write_png(path, array):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def write_cityscapes(datasets, split="val", cities=CITIES):
    """A tiny Cityscapes tree under ``datasets``/cityscapes; returns [(image file,
    labelTrainIds file, label)]."""
    root = os.path.join(datasets, "cityscapes")
    rng = np.random.RandomState(0)
    samples = []
    for city, n in cities.items():
        for i in range(n):
            stem = f"{city}_{i:06d}_000019_"
            image = os.path.join(root, "leftImg8bit", split, city, stem + "leftImg8bit.png")
            gt = os.path.join(root, "gtFine", split, city, stem + "gtFine_")
            label = synthetic_label(len(samples))
            write_png(image, rng.randint(0, 256, size=(H, W, 3), dtype=np.uint8))
            write_png(gt + "labelTrainIds.png", label)
            write_png(gt + "labelIds.png", label)
            write_png(gt + "instanceIds.png", np.zeros((H, W), dtype=np.uint8))
            with open(gt + "polygons.json", "w") as f:
                json.dump({"imgHeight": H, "imgWidth": W, "objects": []}, f)
            samples.append((image, gt + "labelTrainIds.png", label))
    return samples


@pytest.fixture
def cityscapes_val(tmp_path, monkeypatch):
    """The synthetic val split, with DETECTRON2_DATASETS pointing at it."""
    samples = write_cityscapes(str(tmp_path))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    return samples


@pytest.fixture
def val_in_catalog(cityscapes_val):
    """The val split, also as Detectron2's DatasetCatalog gives it to SemSegEvaluator.

    Detectron2 registered the name with the root it saw when detectron2.data was imported,
    so it is registered again with ours, and the builtin loader put back afterwards."""
    from detectron2.data import DatasetCatalog

    from involution_d2.data import cityscapes_sem_seg_dicts

    builtin = DatasetCatalog[VAL]
    DatasetCatalog.remove(VAL)
    DatasetCatalog.register(VAL, lambda: cityscapes_sem_seg_dicts(VAL))
    try:
        yield cityscapes_val
    finally:
        DatasetCatalog.remove(VAL)
        DatasetCatalog.register(VAL, builtin)


def test_loads_through_detectron2(cityscapes_val):
    from detectron2.data import DatasetMapper, MetadataCatalog

    from involution_d2.data import cityscapes_sem_seg_dicts

    dicts = cityscapes_sem_seg_dicts(VAL)
    got = sorted((os.path.normpath(d["file_name"]), os.path.normpath(d["sem_seg_file_name"]),
                  d["height"], d["width"]) for d in dicts)
    assert got == sorted((image, gt, H, W) for image, gt, _ in cityscapes_val)

    # Detectron2's mapper reads the labels back unchanged.
    labels = {os.path.normpath(image): label for image, _, label in cityscapes_val}
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="RGB")
    for d in dicts:
        mapped = mapper(d)
        assert mapped["image"].shape == (3, H, W)
        assert torch.equal(mapped["sem_seg"], torch.as_tensor(labels[os.path.normpath(
            d["file_name"])], dtype=torch.long))

    meta = MetadataCatalog.get(VAL)
    assert len(meta.stuff_classes) == NUM_CLASSES and meta.ignore_label == IGNORE


def evaluate(samples, predict):
    """Detectron2's SemSegEvaluator on one-hot logits of predict(label) for each sample."""
    from detectron2.evaluation import SemSegEvaluator

    evaluator = SemSegEvaluator(VAL, distributed=False)
    evaluator.reset()
    for image, _, label in samples:
        pred = torch.as_tensor(predict(label.astype(np.int64)))
        logits = torch.nn.functional.one_hot(pred, NUM_CLASSES).permute(2, 0, 1).float()
        evaluator.process([{"file_name": image}], [{"sem_seg": logits}])
    return evaluator.evaluate()["sem_seg"]


def ground_truth(label):
    # Ignored pixels get class 0, which must not count against class 0.
    return np.where(label == IGNORE, 0, label)


def test_perfect_predictions_score_100(val_in_catalog):
    from detectron2.data import MetadataCatalog

    result = evaluate(val_in_catalog, ground_truth)
    assert result["mIoU"] == pytest.approx(100)
    assert result["pACC"] == pytest.approx(100)
    for c, name in enumerate(MetadataCatalog.get(VAL).stuff_classes):
        if c == ABSENT:
            assert np.isnan(result[f"IoU-{name}"])
        else:
            assert result[f"IoU-{name}"] == pytest.approx(100)


def test_swapped_class_gives_the_expected_ious(val_in_catalog):
    from detectron2.data import MetadataCatalog

    a, b = 5, 11  # every pixel of class a predicted as b
    result = evaluate(val_in_catalog, lambda label: np.where(label == a, b, ground_truth(label)))

    counts = np.bincount(np.concatenate([label.ravel() for *_, label in val_in_catalog]),
                         minlength=IGNORE + 1)
    n_a, n_b = counts[a], counts[b]
    want = {c: 100.0 for c in range(NUM_CLASSES) if c != ABSENT}
    want[a] = 0.0
    want[b] = 100.0 * n_b / (n_a + n_b)  # tp = n_b; union = gt n_b + predicted n_a + n_b - tp
    names = MetadataCatalog.get(VAL).stuff_classes
    for c, iou in want.items():
        assert result[f"IoU-{names[c]}"] == pytest.approx(iou)
    assert result["mIoU"] == pytest.approx(sum(want.values()) / len(want))
    assert result[f"ACC-{names[b]}"] == pytest.approx(100)


def test_missing_dataset_says_where_and_how(tmp_path, monkeypatch):
    from involution_d2.data import cityscapes_sem_seg_dicts

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(empty))
    with pytest.raises(FileNotFoundError) as info:
        cityscapes_sem_seg_dicts(VAL)
    message = str(info.value)
    assert os.path.join(str(empty), "cityscapes", "leftImg8bit", "val") in message
    assert "DETECTRON2_DATASETS" in message and repr(str(empty)) in message
    assert "labelTrainIds" in message and "createTrainIdLabelImgs" in message
    assert "gtFine_trainvaltest.zip" in message and "leftImg8bit_trainvaltest.zip" in message


def test_missing_label_train_ids_is_named(cityscapes_val):
    from involution_d2.data import cityscapes_sem_seg_dicts

    missing = cityscapes_val[1][1]
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match="createTrainIdLabelImgs") as info:
        cityscapes_sem_seg_dicts(VAL)
    assert missing in str(info.value)


def test_unknown_dataset_name():
    from involution_d2.data import cityscapes_sem_seg_dicts

    with pytest.raises(KeyError, match="cityscapes_fine_sem_seg_train"):
        cityscapes_sem_seg_dicts("cityscapes_fine_sem_seg_test")


def random_image(seed, shape=(32, 48, 3)):
    return np.random.RandomState(seed).randint(0, 256, size=shape, dtype=np.uint8)


def test_photometric_distortion_leaves_labels_alone():
    from detectron2.data import transforms as T

    from involution_d2.data import PhotoMetricDistortion

    image, label = random_image(0), random_image(1, (32, 48))
    aug_input = T.AugInput(image.copy(), sem_seg=label.copy())
    transform = PhotoMetricDistortion(prob=1.0)(aug_input)
    assert aug_input.image.dtype == np.uint8 and aug_input.image.shape == image.shape
    assert not np.array_equal(aug_input.image, image)
    assert np.array_equal(aug_input.sem_seg, label)
    assert np.array_equal(transform.apply_coords(np.ones((2, 2))), np.ones((2, 2)))


def test_photometric_distortion_draws_like_mmseg():
    from involution_d2.data import PhotoMetricDistortion

    aug, image = PhotoMetricDistortion(), random_image(0)

    def draw(seed):
        np.random.seed(seed)
        t = aug.get_transform(image)
        return t.brightness, t.contrast, t.saturation, t.hue, t.contrast_last

    assert draw(7) == draw(7)
    draws = np.array([draw(seed) for seed in range(400)], dtype=float)
    brightness, contrast, saturation, hue, contrast_last = draws.T
    for values, identity in ((brightness, 0), (contrast, 1), (saturation, 1), (hue, 0)):
        assert 0.4 < np.mean(values != identity) < 0.6  # each applied with probability 0.5
    assert 0.4 < contrast_last.mean() < 0.6
    assert np.abs(brightness).max() <= 32 and brightness.min() < -16 and brightness.max() > 16
    assert contrast.min() >= 0.5 and contrast.max() <= 1.5
    assert saturation.min() >= 0.5 and saturation.max() <= 1.5
    assert np.array_equal(hue, np.round(hue)) and hue.min() >= -18 and hue.max() <= 17


def test_photometric_distortion_is_seeded_by_numpy():
    from involution_d2.data import PhotoMetricDistortion

    aug, image = PhotoMetricDistortion(prob=1.0), random_image(0)
    outputs = []
    for seed in (3, 3, 4):
        np.random.seed(seed)
        outputs.append(aug.get_transform(image).apply_image(image))
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_brightness_and_contrast():
    from involution_d2.data import PhotoMetricDistortion, PhotoMetricTransform

    image = random_image(0).astype(np.int64)
    for d in (40, -40):
        out = PhotoMetricTransform(brightness=d).apply_image(image.astype(np.uint8))
        assert out.dtype == np.uint8
        assert np.array_equal(out, np.clip(image + d, 0, 255))

    # Every step forced, but only the brightness shift random: the output is image + shift.
    aug = PhotoMetricDistortion(contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0,
                                prob=1.0)
    np.random.seed(0)
    transform = aug.get_transform(image)
    assert transform.brightness != 0 and transform.contrast == 1 and transform.saturation == 1
    np.testing.assert_allclose(transform.apply_image(image.astype(np.uint8)),
                               np.clip(image + transform.brightness, 0, 255), atol=0.5 + 1e-3)

    # Contrast scales the values, not their distance to the mean.
    for last in (False, True):
        out = PhotoMetricTransform(contrast=1.5, contrast_last=last).apply_image(
            image.astype(np.uint8))
        np.testing.assert_allclose(out, np.clip(image * 1.5, 0, 255), atol=0.5 + 1e-3)
    out = PhotoMetricTransform(brightness=-300, contrast=1.5).apply_image(image.astype(np.uint8))
    assert not out.any()  # clipped at 0 after the shift, as mmseg does


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_hue_and_saturation_match_colorsys(image_format):
    from involution_d2.data import PhotoMetricTransform

    rgb = random_image(0, (16, 16, 3))
    flip = slice(None) if image_format == "RGB" else slice(None, None, -1)
    image = np.ascontiguousarray(rgb[..., flip])

    # A full turn of hue (180 in OpenCV units) with saturation 1 goes to HSV and back.
    same = PhotoMetricTransform(hue=180, image_format=image_format).apply_image(image)
    assert np.abs(same.astype(int) - image).max() <= 1

    # Pure red, turned by 60 (120 degrees), is pure green; desaturated fully, white.
    red = np.zeros((1, 1, 3), np.uint8)
    red[..., 0 if image_format == "RGB" else 2] = 255
    green = PhotoMetricTransform(hue=60, image_format=image_format).apply_image(red)
    assert green[0, 0].tolist() == [0, 255, 0]
    white = PhotoMetricTransform(saturation=0.0, image_format=image_format).apply_image(red)
    assert white[0, 0].tolist() == [255, 255, 255]

    hue, saturation = 10, 0.7
    out = PhotoMetricTransform(saturation=saturation, hue=hue,
                               image_format=image_format).apply_image(image)[..., flip]
    want = np.array([colorsys.hsv_to_rgb((h + hue / 180) % 1, min(s * saturation, 1), v)
                     for h, s, v in (colorsys.rgb_to_hsv(*(p / 255)) for p in
                                     rgb.reshape(-1, 3))]).reshape(rgb.shape) * 255
    assert np.abs(out - want).max() <= 0.5 + 1e-3


def test_photometric_distortion_rejects_bad_input():
    from involution_d2.data import PhotoMetricDistortion, PhotoMetricTransform

    with pytest.raises(ValueError, match="image_format"):
        PhotoMetricDistortion(image_format="L")
    with pytest.raises(ValueError, match="uint8"):
        PhotoMetricTransform(brightness=1).apply_image(np.zeros((4, 4, 3), np.float32))


def interior(label, radius=3):
    """Pixels whose (2 radius + 1)^2 neighbourhood lies in the crop and has a single label:
    away from the block edges, where bilinear image and nearest-neighbour labels may differ,
    including those just outside the crop."""
    h, w = label.shape
    padded = np.pad(label.astype(int), radius, constant_values=-1)
    inside = np.ones_like(label, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            inside &= padded[dy:dy + h, dx:dx + w] == label
    return inside


@pytest.fixture(scope="module")
def cityscapes_sized_sample():
    """A 1024x2048 label map of random 32x32 blocks (classes 0..18 and ignore) and an image
    whose three channels are the label."""
    blocks = np.random.RandomState(0).randint(0, NUM_CLASSES + 1, size=(32, 64))
    blocks[blocks == NUM_CLASSES] = IGNORE
    label = np.kron(blocks, np.ones((32, 32), dtype=int)).astype(np.uint8)
    return np.repeat(label[:, :, None], 3, axis=2), label


def augment(augmentations, image, label, seed):
    from detectron2.data import transforms as T

    np.random.seed(seed)
    aug_input = T.AugInput(image, sem_seg=label)
    T.AugmentationList(augmentations)(aug_input)
    return aug_input.image, aug_input.sem_seg


def test_train_augmentations_crop_with_aligned_labels(cityscapes_sized_sample):
    from involution_d2.data import PhotoMetricDistortion, cityscapes_train_augmentations

    image, label = cityscapes_sized_sample
    augmentations = cityscapes_train_augmentations()
    assert isinstance(augmentations[-1], PhotoMetricDistortion)
    geometric = augmentations[:-1]
    for seed in range(3):
        out, seg = augment(geometric, image, label, seed)
        assert out.shape == (512, 1024, 3) and seg.shape == (512, 1024)
        assert set(np.unique(seg)) <= set(np.unique(label))
        inside = interior(seg)
        assert inside.mean() > 0.5
        for channel in range(3):
            assert np.array_equal(out[..., channel][inside], seg[inside])

        # With the colour distortion: the same crop (it draws last), the same labels.
        distorted, distorted_seg = augment(augmentations, image, label, seed)
        assert distorted.dtype == np.uint8 and distorted.shape == out.shape
        assert np.array_equal(distorted_seg, seg)


def test_train_crop_does_not_pad_a_smaller_image(cityscapes_sized_sample):
    from involution_d2.data import cityscapes_train_augmentations

    image, label = cityscapes_sized_sample
    geometric = cityscapes_train_augmentations(scale_range=(0.25, 0.25))[:-1]
    out, seg = augment(geometric, image, label, 0)
    # Rescaled to 256x512, below the 512x1024 crop: Detectron2 keeps it whole.
    assert out.shape == (256, 512, 3) and seg.shape == (256, 512)
    inside = interior(seg, radius=2)
    assert np.array_equal(out[..., 0][inside], seg[inside])


def test_lazy_config_pipeline_trains_and_evaluates(val_in_catalog):
    """The Cityscapes LazyConfig end to end on the synthetic tree: its train loader (dataset
    function, mapper, the official augmentations) feeds a training step, and its test loader
    and evaluator give an mIoU."""
    import torch
    from detectron2.config import LazyConfig, instantiate
    from detectron2.utils.events import EventStorage

    cfg = LazyConfig.load(os.path.join(CONFIG_ROOT,
                                       "Cityscapes-SemanticSegmentation",
                                       "semantic_fpn_rednet50_invfpn_80k.py"))
    cfg.model.backbone.bottom_up.depth = 26
    train = cfg.dataloader.train
    train.dataset.dataset_name = "cityscapes_fine_sem_seg_val"  # the synthetic split
    train.total_batch_size, train.num_workers = 2, 0
    train.mapper.augmentations.base_size = (64, 128)  # the synthetic images' size
    train.mapper.augmentations.crop_size = (32, 64)
    cfg.dataloader.test.num_workers = 0
    cfg.dataloader.test.mapper.augmentations[0].update(short_edge_length=H, max_size=W)

    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    batch = next(iter(instantiate(train)))
    assert len(batch) == 2
    for d in batch:
        assert d["image"].shape[0] == 3 and d["image"].shape[1:] == d["sem_seg"].shape
        assert d["sem_seg"].shape[0] <= 32 and d["sem_seg"].shape[1] <= 64
    with EventStorage():
        losses = model(batch)
    assert torch.isfinite(losses["loss_sem_seg"])

    model.eval()
    evaluator = instantiate(cfg.dataloader.evaluator)
    evaluator.reset()
    with torch.no_grad():
        for inputs in instantiate(cfg.dataloader.test):
            outputs = model(inputs)
            assert outputs[0]["sem_seg"].shape == (19, H, W)
            evaluator.process(inputs, outputs)
    result = evaluator.evaluate()["sem_seg"]
    assert 0.0 <= result["mIoU"] <= 100.0
