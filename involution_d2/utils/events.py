"""Detectron2's metrics.json (written by its JSONWriter, detectron2/utils/events.py) (one JSON record per line, each with its "iteration") kept to
the iterations that led to the current weights."""
import json

__all__ = ["drop_metrics_from"]


def drop_metrics_from(path, start_iter):
    """Truncate ``path`` before its first record of an iteration >= ``start_iter``, where
    training (re)starts. After a kill, --resume retrains the iterations after the last
    checkpoint: their records from the interrupted run describe weights that were lost, and
    would otherwise appear twice. A half-written last line goes too. Truncated in place,
    since Detectron2's JSONWriter has the file open for appending. Returns the number of
    records dropped."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return 0
    with f:
        keep = end = dropped = 0
        for line in f:
            end += len(line)
            try:
                iteration = json.loads(line)["iteration"] if line.endswith(b"\n") else None
            except (ValueError, KeyError, TypeError):
                iteration = None
            if dropped or not isinstance(iteration, int) or iteration >= start_iter:
                dropped += 1
            else:
                keep = end
        if keep < end:
            f.truncate(keep)
    return dropped
