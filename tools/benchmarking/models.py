"""Throughput, peak memory and saved-for-backward bytes of RedNet-50 models against
Detectron2's ResNet-50 twins, with a profile of where the time goes: the library of
``tools/benchmark_models.py`` (whose docstring says what is measured and how)."""
import os
import statistics
import warnings

import torch

from involution_d2.ops.involution import AGGREGATION_RANGE
from .timing import (Glibc, PeakMemory, cpu_model, paired_speed, print_table, synchronize,
                     time_round_robin, time_rounds)

TWIN = "twin"
# suite: [(label, config)], the ResNet-50 twin last. "model-zoo:" configs are Detectron2's.
SUITES = {
    "backbone": [("RedNet-50", "COCO-Detection/faster_rcnn_rednet50_fpn_1x.yaml"),
                 ("ResNet-50", "model-zoo:COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")],
    # Every stage trained (the detectors freeze the stem and res2).
    "backbone_all_trained": [
        ("RedNet-50, all stages trained",
         "COCO-Detection/faster_rcnn_rednet50_fpn_1x.yaml+MODEL.BACKBONE.FREEZE_AT=0"),
        ("ResNet-50, all stages trained",
         "model-zoo:COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml+MODEL.BACKBONE.FREEZE_AT=0")],
    "faster_rcnn": [
        ("Faster R-CNN RedNet-50 FPN", "COCO-Detection/faster_rcnn_rednet50_fpn_1x.yaml"),
        ("Faster R-CNN RedNet-50 invFPN invhead",
         "COCO-Detection/faster_rcnn_rednet50_invfpn_invhead_1x.yaml"),
        ("Faster R-CNN ResNet-50 FPN", "model-zoo:COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")],
    "mask_rcnn": [
        ("Mask R-CNN RedNet-50 FPN", "COCO-InstanceSegmentation/mask_rcnn_rednet50_fpn_1x.yaml"),
        ("Mask R-CNN RedNet-50 invFPN invhead",
         "COCO-InstanceSegmentation/mask_rcnn_rednet50_invfpn_invhead_1x.yaml"),
        ("Mask R-CNN ResNet-50 FPN",
         "model-zoo:COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")],
    "retinanet": [
        ("RetinaNet RedNet-50 FPN", "COCO-Detection/retinanet_rednet50_fpn_1x.yaml"),
        ("RetinaNet RedNet-50 invFPN", "COCO-Detection/retinanet_rednet50_invfpn_1x.yaml"),
        ("RetinaNet ResNet-50 FPN", "model-zoo:COCO-Detection/retinanet_R_50_FPN_1x.yaml")],
    "semantic_fpn": [
        ("Semantic FPN RedNet-50 FPN",
         "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_fpn_80k.yaml"),
        ("Semantic FPN RedNet-50 invFPN",
         "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_invfpn_80k.yaml"),
        # The conv-FPN config on Detectron2's ResNet-50 FPN (same head), trained and normed
        # as the RedNet is: every stage, SyncBN (BN in one process).
        ("Semantic FPN ResNet-50 FPN",
         "Cityscapes-SemanticSegmentation/semantic_fpn_rednet50_fpn_80k.yaml"
         "+MODEL.BACKBONE.NAME=build_resnet_fpn_backbone+MODEL.RESNETS.NORM=SyncBN"
         "+MODEL.RESNETS.OUT_FEATURES=['res2','res3','res4','res5']")],
}
DEFAULT_SIZES = {"semantic_fpn": (512, 1024)}  # training crops; detection: 800x1216
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_config(spec, device):
    """The yacs config of a suite entry: ``path[+KEY=VALUE...]``, a config of this model zoo,
    or ``model-zoo:path`` of Detectron2's; loaded as the tools load configs."""
    from detectron2 import model_zoo as detectron2_model_zoo

    from involution_d2.config.files import setup_config
    from involution_d2.model_zoo import get_config_file

    spec, *overrides = spec.split("+")
    if spec.startswith("model-zoo:"):
        path = detectron2_model_zoo.get_config_file(spec[len("model-zoo:"):])
    else:
        path = get_config_file(spec)
    cfg = setup_config(path, [part for o in overrides for part in o.split("=", 1)], freeze=False)
    cfg.MODEL.DEVICE = str(device)
    _single_process_norms(cfg)
    return cfg


def _single_process_norms(node):
    """SyncBN needs a process group; one process computes the same with BN."""
    for key, value in node.items():
        if isinstance(value, dict):
            _single_process_norms(value)
        elif key.endswith("NORM") and value == "SyncBN":
            node[key] = "BN"


class BackboneOnly(torch.nn.Module):
    """A detector's bottom-up network (RedNet / ResNet with its frozen stages)."""

    def __init__(self, model):
        super().__init__()
        self.net = model.backbone.bottom_up
        self.device = model.device

    def forward(self, images):
        return tuple(self.net(images).values())


def synthetic_batch(cfg, batch, size, device, seed=0):
    """Detectron2-format inputs with annotations for training, and the normalised image
    tensor the network sees for inference."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    h, w = size
    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        item = {"image": image, "height": h, "width": w}
        if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor" or "Segmentor" in \
                cfg.MODEL.META_ARCHITECTURE:
            item["sem_seg"] = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (h, w),
                                            generator=g)
        else:
            inst = Instances((h, w))
            xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
            wh = (torch.rand(3, 2, generator=g) * 0.3 + 0.05) * torch.tensor([w, h])
            boxes = torch.cat([xy, xy + wh], dim=1)
            inst.gt_boxes = Boxes(boxes)
            inst.gt_classes = torch.randint(0, 80, (3,), generator=g)
            masks = torch.zeros(3, h, w, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                masks[i, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(masks)
            item["instances"] = inst
        inputs.append(item)
    tensor = torch.randn(batch, 3, h, w, generator=g).to(device)
    return inputs, tensor


def set_backend(model, backend):
    from involution_d2.layers import Involution

    layers = [m for m in model.modules() if isinstance(m, Involution)]
    for m in layers:
        m.backend = backend
    return len(layers)


class Case:
    """One model variant (label, involution backend) with its step functions."""

    def __init__(self, label, model, backend, is_twin, suite, memory=None):
        from involution_d2.analysis import OpenMMLabDummyForward

        self.label, self.model, self.backend, self.is_twin = label, model, backend, is_twin
        self.memory = memory  # one of MEMORY_VARIANTS, or None: as the config builds it
        self.network = BackboneOnly(model) if suite.startswith("backbone") else \
            OpenMMLabDummyForward(model)
        self.suite = suite
        self.optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                         lr=1e-4, momentum=0.9)

    @property
    def name(self):
        if self.is_twin:
            return self.label
        return f"{self.label} [{self.backend}]" + (f" {self.memory}" if self.memory else "")

    def _prepare(self):
        if not self.is_twin:
            set_backend(self.model, self.backend)
        if self.memory is not None:
            recompute, with_cp = MEMORY_VARIANTS[self.memory]
            for m in self.model.modules():
                if hasattr(m, "recompute_activations"):
                    m.recompute_activations = recompute
                if hasattr(m, "with_cp"):
                    m.with_cp = with_cp

    def inference(self, tensor, dtype):
        self._prepare()
        self.model.eval()
        with torch.no_grad(), torch.autocast(tensor.device.type, dtype=dtype or torch.float32,
                                             enabled=dtype is not None):
            self.network(tensor)

    def training_loss(self, inputs, tensor, dtype):
        """One training forward, to its loss."""
        from detectron2.utils.events import EventStorage

        self._prepare()
        self.model.train()
        with EventStorage(0), torch.autocast(tensor.device.type, dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            if self.suite.startswith("backbone"):
                return sum(o.float().mean() for o in self.network(tensor))
            return sum(self.model(inputs).values())

    def train(self, inputs, tensor, dtype):
        self.training_loss(inputs, tensor, dtype).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def residual_branches_start_at_zero(model):
    """Random weights with frozen BatchNorm statistics let activations grow without bound
    through 16 blocks (involution is quadratic in its input: it overflows to NaN by res4).
    Pretrained residual branches contribute little; here each block's last norm scale is
    zeroed, in the twins too. The work done is the same; only the values stay finite."""
    for block in model.modules():
        norm = getattr(block, "bn3", None) or getattr(getattr(block, "conv3", None), "norm", None)
        if norm is not None and hasattr(norm, "weight"):
            with torch.no_grad():
                norm.weight.zero_()


# RedNet's training-memory options: (recompute_activations, with_cp). with_cp as a user
# turns it on: the recomputation stays on where with_cp does not reach (necks, heads).
MEMORY_VARIANTS = {"no-recompute": (False, False), "recompute": (True, False),
                   "with_cp": (True, True)}


def build_cases(suite, backends, device, memory_variants=False):
    """The suite's model variants, and the twin's config (for the synthetic batch); with
    ``memory_variants``, each RedNet model once per MEMORY_VARIANTS entry."""
    cases = []
    for label, spec in SUITES[suite]:
        cfg = build_config(spec, device)
        from detectron2.modeling import build_model

        torch.manual_seed(0)
        model = build_model(cfg)
        residual_branches_start_at_zero(model)
        is_twin = set_backend(model, "auto") == 0
        for backend in ([None] if is_twin else backends):
            for memory in (MEMORY_VARIANTS if memory_variants and not is_twin else [None]):
                cases.append(Case(label, model, backend, is_twin, suite, memory))
    return cases, cfg


def count_saved_bytes(model, forward):
    """(what ``forward()`` returns, the bytes it keeps for backward): every storage that
    autograd saves, counted once, ``model``'s parameters and buffers excluded (they exist
    anyway). Counted through torch.autograd.graph.saved_tensors_hooks: exact and the same on
    any machine."""
    resident = {t.untyped_storage().data_ptr() for t in
                list(model.parameters()) + list(model.buffers())}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in resident:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = forward()
    return result, sum(storages.values())


def saved_for_backward(case, inputs, tensor, dtype):
    """Bytes that one training forward keeps for backward (:func:`count_saved_bytes`)."""
    loss, saved = count_saved_bytes(case.model,
                                    lambda: case.training_loss(inputs, tensor, DTYPES[dtype]))
    del loss
    return saved


def measure(cases, mode, dtype, inputs, tensor, device, repeat, warmup, glibc):
    def step(case):
        if mode == "inference":
            return lambda: case.inference(tensor, DTYPES[dtype])
        return lambda: case.train(inputs, tensor, DTYPES[dtype])

    rounds = time_rounds({c.name: step(c) for c in cases}, device, repeat, warmup)
    peaks = {}
    for c in cases:
        if glibc is not None:
            glibc.memory_mode()
        try:
            with PeakMemory(device) as mem:
                step(c)()
            peaks[c.name] = mem.peak
        finally:
            if glibc is not None:
                glibc.timing_mode()
    return rounds, peaks


CATEGORIES = ("involution span + aggregation", "involution reduction", "convolution",
              "normalization", "RoIAlign / NMS", "other")


def _category(event):
    """The category of a profiler event: the involution ranges it runs in, else its name.
    The fused operator (span convolution and aggregation) and its backward are "involution
    span + aggregation"; the rest of the layer's forward (pooling, the reducing convolution,
    its norm and ReLU) is "involution reduction". (In training, the backward of the reducing
    convolution counts as "convolution": autograd runs it outside the layer's range.)"""
    inside_layer = False
    parent = event
    while parent is not None:
        # The forward runs in the range; the backward is the operator's own backward
        # (involution_d2::involution_backward) or the "torch" backend's autograd node.
        if parent.name in AGGREGATION_OPS or "InvolutionBackward" in parent.name:
            return "involution span + aggregation"
        inside_layer = inside_layer or parent.name == LAYER_RANGE
        parent = parent.cpu_parent
    if inside_layer:
        return "involution reduction"
    name = event.name
    if "conv" in name:
        return "convolution"
    if "norm" in name:
        return "normalization"
    if "roi_align" in name or "nms" in name:
        return "RoIAlign / NMS"
    return "other"


LAYER_RANGE = "involution_d2::Involution"
# The operators' backward, run by autograd outside the forward's range.
AGGREGATION_OPS = (AGGREGATION_RANGE, "involution_d2::involution_backward",
                   "involution_d2::fused_involution_backward")


def _annotate_layers(model):
    """Profiler ranges around each Involution layer (forward), through module hooks."""
    from involution_d2.layers import Involution

    handles = []
    for m in model.modules():
        if isinstance(m, Involution):
            def pre(mod, args):
                mod._range = torch.profiler.record_function(LAYER_RANGE)
                mod._range.__enter__()

            def post(mod, args, out):
                mod._range.__exit__(None, None, None)

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


def profile(case, mode, dtype, inputs, tensor, device):
    """Share of self time per category in one iteration (device time on a GPU)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    handles = _annotate_layers(case.model)
    try:
        run = (lambda: case.inference(tensor, DTYPES[dtype])) if mode == "inference" else \
            (lambda: case.train(inputs, tensor, DTYPES[dtype]))
        run()  # warm-up
        synchronize(device)
        with torch_profile(activities=activities) as prof:
            run()
            synchronize(device)
    finally:
        for h in handles:
            h.remove()
    shares = dict.fromkeys(CATEGORIES, 0.0)
    gpu = device.type == "cuda"
    for e in prof.events():
        t = e.self_device_time_total if gpu else e.self_cpu_time_total
        if t:
            shares[_category(e)] += t
    return shares


DEMO_CONFIG = "Demo/mask_rcnn_rednet26_invfpn_invhead_shapes.py"


def demo_evaluation(backends, device, repeat, warmup, size=(128, 128)):
    """Seconds per image of the demo Mask R-CNN in evaluation (inference with
    post-processing), one image at a time, for each involution backend side by side."""
    from detectron2.config import LazyConfig, instantiate

    from involution_d2.model_zoo import get_config_file

    cfg = LazyConfig.load(get_config_file(DEMO_CONFIG))
    cfg.model.roi_heads.box_predictor.test_score_thresh = 0.0  # keep all 100 detections
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).eval()
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8),
               "height": size[0], "width": size[1]}]
    detections = {}

    def run(backend):
        def step():
            set_backend(model, backend)
            with torch.no_grad():
                detections[backend] = len(model(inputs)[0]["instances"])
        return step

    times = time_round_robin({b: run(b) for b in backends}, device, repeat, warmup)
    rows = [["demo", f"Mask R-CNN RedNet-26 invFPN invhead [{b}]", f"{size[0]}x{size[1]}",
             str(detections[b]), f"{times[b] / 1e3:.3f}", f"{times[backends[-1]] / times[b]:.2f}x"]
            for b in backends]
    print()
    print_table(rows, ["suite", "model [involution backend]", "image", "detections", "s/image",
                       f"speed vs [{backends[-1]}]"])
    print(flush=True)


def _paired(base, other):
    if base is other:
        return "1.00x"
    median, low, high = paired_speed(base, other)
    return f"{median:.2f}x ({low:.2f}-{high:.2f})"


def report(args):
    """Runs the suites that ``args`` (the tool's command line) asks for and prints them."""
    warnings.filterwarnings("ignore", category=UserWarning)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    backends = args.backends or (["auto"] if cuda else ["native", "torch"])
    batch = args.batch or (2 if cuda else 1)
    repeat = args.repeat or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    glibc = None
    if not cuda:
        glibc = Glibc()
        glibc.timing_mode()

    name, bf16 = cpu_model()
    print(f"# device: {torch.cuda.get_device_name(device) if cuda else 'cpu'}; CPU: {name}, "
          f"native bfloat16 (AVX-512 BF16 / AMX): {'yes' if bf16 else 'no'}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU threads; batch {batch}, median "
          f"of {repeat} after {warmup} warm-up; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    if "native" in backends:
        from involution_d2.ops.backends import kernels_for

        kernels_for("native", "cpu")  # says why, where the native kernels cannot run
    first_backend = backends[0]
    for suite in args.suites:
        if suite == "demo":
            demo_evaluation(backends, device, repeat, warmup)
            continue
        rows, profile_rows = [], []
        size = tuple(args.size) if args.size else DEFAULT_SIZES.get(suite, (800, 1216))
        cases, twin_cfg = build_cases(suite, backends, device, args.memory_variants)
        inputs, tensor = synthetic_batch(twin_cfg, batch, size, device)
        twin = next(c for c in cases if c.is_twin)
        first = {c.label: c for c in reversed(cases) if not c.is_twin}
        if args.saved_only:
            for dtype in args.dtypes:
                saved = {c.name: saved_for_backward(c, inputs, tensor, dtype) / 2**20
                         for c in cases}
                rows += [[suite, c.name, dtype, f"{saved[c.name]:.0f}",
                          f"{saved[c.name] / saved[twin.name]:.2f}"] for c in cases]
            del cases
            if glibc is not None:
                glibc.release()
            print()
            print_table(rows, ["suite", "model [involution backend]", "dtype",
                               "saved for backward MiB", "saved / ResNet-50"])
            print(flush=True)
            continue
        for mode in args.modes:
            for dtype in args.dtypes:
                print(f"# {suite}, {mode}, {dtype}, {batch}x3x{size[0]}x{size[1]}", flush=True)
                rounds, peaks = measure(cases, mode, dtype, inputs, tensor, device, repeat,
                                        warmup, glibc)
                times = {name: statistics.median(t) for name, t in rounds.items()}
                saved = ({c.name: saved_for_backward(c, inputs, tensor, dtype) / 2**20
                          for c in cases} if mode == "train" else {})
                for c in cases:
                    t, m = times[c.name], peaks[c.name]
                    base = first.get(c.label)
                    rows.append([
                        suite, c.name, mode, dtype, f"{batch * 1e3 / t:.2f}", f"{t:.1f}",
                        f"{m:.0f}", f"{times[twin.name] / t:.2f}x",
                        f"{m / peaks[twin.name]:.2f}" if peaks[twin.name] > 0 else "-",
                        f"{saved[c.name]:.0f}" if saved else "-",
                        f"{saved[c.name] / saved[twin.name]:.2f}" if saved else "-",
                        _paired(rounds[base.name], rounds[c.name]) if base is not None else "-",
                    ])
                if args.profile:
                    for c in cases:
                        shares = profile(c, mode, dtype, inputs, tensor, device)
                        total = sum(shares.values()) or 1.0
                        profile_rows.append([suite, c.name, mode, dtype, f"{total / 1e3:.1f}"]
                                            + [f"{100 * shares[k] / total:.1f} %"
                                               for k in CATEGORIES])
        del cases
        if glibc is not None:
            glibc.release()
        print()
        print_table(rows, ["suite", "model [involution backend]", "mode", "dtype", "images/s",
                           "ms/iter", "peak MiB", "speed vs ResNet-50", "memory / ResNet-50",
                           "saved for backward MiB", "saved / ResNet-50",
                           f"speed vs [{first_backend}]"])
        if profile_rows:
            print()
            print("# where the time goes: share of self time"
                  + (" on the GPU" if cuda else " on the CPU") + " in one iteration")
            print_table(profile_rows, ["suite", "model", "mode", "dtype", "total ms"]
                        + list(CATEGORIES))
        print(flush=True)
