"""The options of one lottery-ticket run from scratch (``llmprune lth``); ``configs/lth-*.yaml`` recipes fill it."""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import LLMPruneError
from ...options import option
from ..ticket_options import RecipeMixin, parse_name_list, parse_rewind

LTH_CONTROLS = ("reinit", "random-mask", "one-shot")
PRESETS = ("lenet", "conv2", "conv4", "conv6", "sum-of-two")


@dataclass
class LTHOptions(RecipeMixin):
    """The original lottery-ticket experiments (Frankle & Carbin 2019). ``None`` means: the preset's value
    (``shown`` says which, in ``--help``)."""

    preset: str = option("lenet", "the paper's protocol: lenet, conv2, conv4, conv6, or the toy sum-of-two", choices=PRESETS)
    data: str | None = option(None, "fashion-mnist, mnist1d, mnist, cifar10 (these two need the network), or a folder "
                              "of IDX files or a data.npz", shown="fashion-mnist; cifar10 for conv presets")
    output: str | None = option(None, "run folder: state, reports, plots and the winning ticket",
                                shown="lth-<preset>")
    hidden: str | None = option(None, "hidden widths of a fully connected net, e.g. 500,500", shown="lenet 300,100")
    rounds: int | None = option(None, "pruning rounds after the dense one",
                                shown="15; sum-of-two: until 2 weights per layer remain")
    rate: float | None = option(None, "share of each fully connected layer's surviving weights pruned per round",
                                shown="0.2; sum-of-two 0.25")
    conv_rate: float | None = option(None, "the same for convolutions", shown="conv2/conv4 0.1, conv6 0.15")
    output_rate: float | None = option(None, "the same for the output layer", shown="half of --rate")
    pruning: str = option("layerwise", "layerwise (each layer by its own rate) or global (one threshold for all "
                          "layers, at --rate)", choices=("layerwise", "global"))
    iterations: int | None = option(None, "training iterations per round",
                                    shown="lenet 50000, conv2 20000, conv4 25000, conv6 30000")
    lr: float | None = option(None, "Adam learning rate", shown="lenet 1.2e-3, conv2 2e-4, conv4/conv6 3e-4")
    batch_size: int | None = option(None, "batch size", shown="60")
    eval_every: int = option(100, "evaluate validation and test every this many iterations")
    validation_size: int | None = option(None, "validation examples drawn from the training set with the seed",
                                         shown="5000; mnist1d 500")
    trials: int = option(1, "repeat everything with this many seeds; the report gives mean, min and max")
    controls: list = option([], "comma list of reinit, random-mask, one-shot; or all / none (sum-of-two always runs "
                            "reinit and a permuted ticket on its final ticket)")
    rewind: str | None = option(None, "init, or step:K: late rewinding to the weights after K iterations",
                                shown="init; sum-of-two step:1")
    seed: int = option(0, "first seed")
    parallel_jobs: int | None = option(None, "train up to this many independent jobs (trials, a round's controls "
                                       "beside its ticket) as one stacked model; 1: one model at a time",
                                       shown="as many as the schedule allows")
    device: str = option("auto", "auto, cpu or cuda")
    progress: bool = option(True, "no progress bars", flag="--no-progress")
    overwrite: bool = option(False, "delete an existing run in --output and start again")

    def validate(self) -> None:
        self.controls = parse_name_list(self.controls, LTH_CONTROLS, "control(s)")
        if self.rewind is not None:
            parse_rewind(self.rewind)
        if self.rewind == "pretrained":
            raise LLMPruneError("lottery tickets from scratch rewind to init or step:K (pretrained is for BERT)")
        for name in ("rounds", "iterations", "batch_size", "eval_every", "trials", "validation_size", "parallel_jobs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LLMPruneError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        for name in ("rate", "conv_rate", "output_rate"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise LLMPruneError(f"--{name.replace('_', '-')} must be between 0 and 1 (got {value})")
        if self.hidden is not None:
            parse_hidden(self.hidden)
        if self.output is None:
            self.output = f"lth-{self.preset}"


def parse_hidden(spec) -> list[int]:
    if isinstance(spec, (list, tuple)):
        parts = [str(p) for p in spec]
    else:
        parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise LLMPruneError(f"--hidden must be positive widths separated by commas, e.g. 300,100 (got '{spec}')")
    return [int(p) for p in parts]
