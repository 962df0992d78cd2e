"""Typos fail early: unknown keys and wrong types of both config systems are named, with
the nearest valid key, before anything runs."""


import pytest

from helpers import LAZY_DEMO, YACS_DEMO, last_line, requires_detectron2, run

pytestmark = requires_detectron2


# ------------------------------------------------------------ typos fail early
def test_lazy_override_typos_and_wrong_types_fail_naming_the_key():
    from involution_d2.utils.errors import ConfigError
    from involution_d2.config.files import setup_config

    cases = {
        "train.max_iterr=40": r"train has no key max_iterr; did you mean max_iter\?",
        "train.max_iter=abc": r"train.max_iter takes an integer, like its current value 250",
        "train.amp.enabled=1": "takes true or false",
        "optimizer.lr=fast": "optimizer.lr takes a number",
        "model.backbone.bottom_up.depthh=50": r"has no key depthh; did you mean depth\?",
        "SOLVER.MAX_ITER": "KEY VALUE is yacs syntax",
        "--resume": "put options before the overrides",
    }
    for override, match in cases.items():
        with pytest.raises(ConfigError, match=match):
            setup_config(LAZY_DEMO, [override])
    # Keys that exist, arguments that the LazyCall's target takes, and + additions pass.
    cfg = setup_config(LAZY_DEMO, ["train.max_iter=40", "optimizer.lr=1",
                                   "model.backbone.bottom_up.stem_out_channels=32",
                                   "+train.note=kept"])
    assert (cfg.train.max_iter, cfg.optimizer.lr, cfg.train.note) == (40, 1, "kept")


def test_yacs_typos_and_unknown_config_kinds_fail_clearly(tmp_path):
    from involution_d2.utils.errors import ConfigError
    from involution_d2.config.files import setup_config

    with pytest.raises(ConfigError, match=r"SOLVER.MAX_ITERR: no such config key; did you "
                                          r"mean SOLVER.MAX_ITER "):
        setup_config(YACS_DEMO, ["SOLVER.MAX_ITERR", "40"])
    with pytest.raises(ConfigError, match="Type mismatch.*SOLVER.MAX_ITER"):
        setup_config(YACS_DEMO, ["SOLVER.MAX_ITER", "abc"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        setup_config(YACS_DEMO, ["train.max_iter=40"])
    (tmp_path / "config.txt").write_text("SOLVER:\n  MAX_ITER: 3\n")
    with pytest.raises(ConfigError, match=r"unknown kind of config file \(.txt\); expected"):
        setup_config(str(tmp_path / "config.txt"))


def test_train_net_typo_stops_before_anything_runs(cache, tiny, tmp_path):
    out = tmp_path / "out"
    proc = run("train_net.py", "--config-file", tiny["config"], "train.max_iterr=2",
               f"train.output_dir={out}", cache=cache)
    assert proc.returncode == 2 and not out.exists()
    assert last_line(proc.stderr).startswith(
        "error: override train.max_iterr=2: train has no key max_iterr; did you mean max_iter?")
