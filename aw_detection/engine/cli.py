"""How the tools end on user errors: one message, a non-zero status, no traceback."""
import contextlib
import functools
import logging
import os
import sys

from aw_detection.engine.allocator import reuse_freed_memory
from aw_detection.config import load_config, load_run_config
from aw_detection.errors import UserError

__all__ = ["user_errors", "add_model_arguments", "model_config", "add_dataset_arguments",
           "train_or_evaluate", "launch_main", "DIVERGED_EXIT", "USER_ERROR_EXIT"]

USER_ERROR_EXIT = 2
DIVERGED_EXIT = 3


@contextlib.contextmanager
def user_errors(debug=False, run=None):
    """UserError -> "error: ..." on stderr, exit 2. A diverged loss (Detectron2's
    FloatingPointError) -> a message naming the iteration and the last good checkpoint, exit 3.
    ``run``: a dict the caller fills as it goes ("output_dir", "trainer"; "lower" and "restart"
    name its config's keys when they are not the yacs ones).
    With ``debug`` the exception propagates with its traceback."""
    run = {} if run is None else run
    try:
        yield
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
    except FloatingPointError as e:
        if debug:
            raise
        first_line = str(e).splitlines()[0]
        output_dir, trainer = run.get("output_dir"), run.get("trainer")
        where = f" at iteration {trainer.iter}" if trainer is not None else ""
        last = None
        if output_dir and os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
            with open(os.path.join(output_dir, "last_checkpoint")) as f:
                last = os.path.join(output_dir, f.read().strip())
        # Not --resume: it would restore the optimizer and scheduler with the old LR.
        restart = run.get("restart", "MODEL.WEIGHTS {}").format(last)
        kept = (f"The last good checkpoint is {last}; after the change, start from it with "
                f"{restart}." if last else "No checkpoint was written before it.")
        lower = run.get("lower", "Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS.ENABLED True.")
        print(f"error: training stopped{where}: {first_line} {lower} {kept}", file=sys.stderr,
              flush=True)
        sys.exit(DIVERGED_EXIT)


class DropDivergedTraceback(logging.Filter):
    """Detectron2's train loop logs every exception with its traceback; a diverged loss gets
    our one-line message instead."""

    def filter(self, record):
        return not (record.exc_info and record.exc_info[0] is FloatingPointError)


def add_model_arguments(parser):
    """--config-file CFG or --run DIR (a trained run: its config.yaml and model_final.pth)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config-file", metavar="FILE", help="config (set MODEL.WEIGHTS too)")
    group.add_argument("--run", metavar="DIR",
                       help="a trained run's OUTPUT_DIR: its config.yaml and model_final.pth")


def model_config(args):
    """The (unfrozen) config of :func:`add_model_arguments`, with the KEY VALUE ``args.opts``."""
    if args.run:
        return load_run_config(args.run, args.opts)
    return load_config(args.config_file, args.opts)


def add_dataset_arguments(parser):
    """--dataset NAME=ANNOTATIONS.json:IMAGE_DIR (repeatable) and --debug."""
    parser.add_argument("--dataset", action="append", default=[],
                        metavar="NAME=ANNOTATIONS.json:IMAGE_DIR",
                        help="register (and validate) a COCO-format dataset under NAME; repeatable")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return parser


def train_or_evaluate(args, setup, trainer_class):
    """The body of a train_net-style tool: the config from ``setup(args)``, then the trained or
    (``--eval-only``) evaluated model's results; user errors end as :func:`user_errors` says."""
    from aw_detection.checkpoint.checkpointer import AWCheckpointer

    run = {}
    with user_errors(args.debug, run):
        cfg = setup(args)
        run["output_dir"] = cfg.OUTPUT_DIR
        if args.eval_only:
            model = trainer_class.build_model(cfg)
            AWCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True).resume_or_load(
                cfg.MODEL.WEIGHTS, resume=args.resume
            )
            return trainer_class.test(cfg, model)
        trainer = run["trainer"] = trainer_class(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()


def _worker(main, *args):
    reuse_freed_memory()  # per process: launch() may spawn fresh ones
    return main(*args)


def launch_main(main, args):
    """Detectron2's ``launch`` with default_argument_parser's process flags; a worker that
    exited (after printing its own one-line error) gives its exit status."""
    from detectron2.engine import launch
    from torch.multiprocessing import ProcessExitedException

    try:
        launch(functools.partial(_worker, main), args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except ProcessExitedException as e:
        sys.exit(e.exit_code)
