"""Top-k accuracy of an image classifier, as a Detectron2 DatasetEvaluator."""
import itertools
import logging

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["ClassificationEvaluator"]


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1 / top-5 accuracy in percent: ``{"classification": {"top1": .., "top5": ..}}``.

    Reads ``input["label"]`` and ``output["pred_logits"]`` (num_classes,) per image.  Each
    process keeps, per image, the rank of the true class; the main process gathers them
    (Detectron2's ``comm.gather``) and the others return ``{}``, like Detectron2's own
    evaluators.
    """

    def __init__(self, dataset_name=None, topk=(1, 5), distributed=True):
        """
        Args:
            dataset_name (str or None): for the log only; labels come with the inputs.
            topk (tuple[int]): the accuracies to report.
        """
        self.dataset_name = dataset_name
        self.topk = tuple(topk)
        self.distributed = distributed
        self._ranks = []

    def reset(self):
        self._ranks = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            logits = out["pred_logits"].float().cpu()
            # Rank of the true class: how many classes score strictly higher.
            self._ranks.append(int((logits > logits[inp["label"]]).sum()))

    def evaluate(self):
        ranks = self._ranks
        if self.distributed:
            comm.synchronize()
            ranks = list(itertools.chain(*comm.gather(ranks, dst=0)))
            if not comm.is_main_process():
                return {}
        if not ranks:
            logging.getLogger(__name__).warning(
                f"ClassificationEvaluator({self.dataset_name!r}) received no predictions")
            return {}
        ranks = torch.tensor(ranks)
        return {"classification": {
            f"top{k}": (ranks < k).double().mean().item() * 100 for k in self.topk}}
